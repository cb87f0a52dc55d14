"""Checkpoints along training and purification (analysis.dynamics): the schedule, a run's result is
the same with and without them, the defense sees only its clean budget, and the figures' inputs."""

import math

import pandas as pd
import pytest
import torch

from backdoor import steps
from backdoor.analysis.dynamics import keep, schedule
from backdoor.io import load_tensors, read_json, save_tensors
from backdoor.models import build_model, load_checkpoint, save_checkpoint
from test_steps import prepared

FAST = {"ft": {"iterations": 9, "batch_size": 16},
        "fip": {"iterations": 9, "batch_size": 16},
        "fast_fip": {"iterations": 9, "batch_size": 16},
        "nft": {"iterations": 9, "batch_size": 16},
        "fmp": {"iterations": 9, "batch_size": 16, "sensitivity_batch": 8},
        "sibp": {"epochs": 2, "batch_size": 16}}
IDS = {"dataset": "toy", "model": "cnn", "attack": "badnets"}


def test_schedule_is_log_spaced_below_the_interval_then_regular():
    assert schedule(500, 100) == [0, 1, 2, 4, 8, 16, 32, 64, 100, 200, 300, 400, 500]
    assert schedule(90, 100) == [0, 1, 2, 4, 8, 16, 32, 64, 90]  # the last step always
    assert schedule(7, 1) == list(range(8))
    assert not keep(3, 100) and keep(300, 100) and not keep(128, 100)


@pytest.fixture
def workspace(tmp_path):
    prep = prepared()
    prep["test_x"][:] = 255  # no training or pool image is all white: a leak would show
    save_tensors(prep, tmp_path / "prep.pt")
    torch.manual_seed(0)
    save_checkpoint(build_model("cnn", 1, 10, [0.5], [0.5], width=4), tmp_path / "m.pt")
    return tmp_path, prep


def _purify(tmp_path, defense, every=None):
    params = {"type": defense, **FAST[defense]}
    args = dict(ids={**IDS, "defense": defense}, defense_params=params, budget=40, seed=0, defense_seed=0,
                device="cpu", precision="fp32")
    if every is None:
        steps.purify(str(tmp_path / "prep.pt"), str(tmp_path / "p.pt"), str(tmp_path / "m.pt"),
                     str(tmp_path / "m.json"), str(tmp_path / f"{defense}.pt"), str(tmp_path / f"{defense}.json"),
                     **args)
        return load_checkpoint(tmp_path / f"{defense}.pt").state_dict()
    steps.trace_purify(str(tmp_path / "prep.pt"), str(tmp_path / "m.pt"), str(tmp_path / f"{defense}.trace.pt"),
                       every=every, **args)
    return load_tensors(tmp_path / f"{defense}.trace.pt")


@pytest.mark.parametrize("defense", list(FAST))
def test_keeping_checkpoints_leaves_the_purified_model_unchanged(workspace, defense):
    tmp_path, prep = workspace
    steps.poison(str(tmp_path / "prep.pt"), str(tmp_path / "p.pt"), "badnets",
                 {"type": "badnets", "target": 0, "poison_rate": 0.1, "seed": 0})
    (tmp_path / "m.json").write_text('{"acc": 10.0, "asr": 10.0, "ra": 0.0}')
    plain = _purify(tmp_path, defense)
    trace = _purify(tmp_path, defense, every=4)
    final = trace["states"][-1]
    assert final.keys() == plain.keys()
    assert all(torch.equal(final[k], plain[k]) for k in plain), "a trace changed the run's result"
    total = trace["total_steps"]
    assert total > 0 and trace["steps"] == schedule(total, 4)
    start = load_checkpoint(tmp_path / "m.pt").state_dict()
    assert all(torch.equal(trace["states"][0][k], start[k]) for k in start)  # step 0: the backdoored model
    model = build_model("cnn", 1, 10, [0.5], [0.5], width=4)
    for state in trace["states"]:  # every checkpoint is the plain architecture (masks folded)
        model.load_state_dict(state)


def test_the_traced_defense_sees_only_its_clean_budget(workspace, monkeypatch):
    tmp_path, prep = workspace
    seen = []

    def spy(model, clean, params, gen, device):
        seen.append(clean)
        return model, {}

    monkeypatch.setattr("backdoor.defenses.get_defense", lambda kind: spy)
    steps.trace_purify(str(tmp_path / "prep.pt"), str(tmp_path / "m.pt"), str(tmp_path / "t.pt"),
                       ids={**IDS, "defense": "ft"}, defense_params={"type": "ft"}, budget=40, seed=0,
                       defense_seed=0, every=4, device="cpu", precision="fp32")
    (clean,) = seen
    pool = {tuple(img.flatten().tolist()) for img in prep["train_x"][prep["pool_idx"]]}
    assert len(clean) == 40 and all(tuple(img.flatten().tolist()) in pool for img in clean.x)
    assert not (clean.x == 255).flatten(1).all(1).any()  # no test image
    assert load_tensors(tmp_path / "t.pt")["steps"] == [0]  # the spy took no step: the start only


def test_training_trace_ends_in_the_trained_model_and_is_measured(workspace):
    tmp_path, prep = workspace
    steps.poison(str(tmp_path / "prep.pt"), str(tmp_path / "p.pt"), "badnets",
                 {"type": "badnets", "target": 0, "poison_rate": 0.1, "seed": 0})
    model_params = {"type": "cnn", "width": 4}
    train_params = {"epochs": 2, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4,
                    "crop_pad": 2, "flip": True}
    steps.train(str(tmp_path / "prep.pt"), str(tmp_path / "p.pt"), str(tmp_path / "trained.pt"),
                str(tmp_path / "trained.json"), model_params, train_params, seed=3, device="cpu", precision="fp32")
    steps.trace_train(str(tmp_path / "prep.pt"), str(tmp_path / "p.pt"), str(tmp_path / "tt.pt"), model_params,
                      train_params, seed=3, every=2, device="cpu", precision="fp32")
    trained, trace = load_checkpoint(tmp_path / "trained.pt").state_dict(), load_tensors(tmp_path / "tt.pt")
    assert all(torch.equal(trace["states"][-1][k], trained[k]) for k in trained)
    per_epoch = math.ceil(200 / 64)
    assert trace["steps_per_epoch"] == per_epoch and trace["steps"] == schedule(2 * per_epoch, 2)

    settings = {"images": 20, "power_iterations": 3, "tol": 1.0e-2, "probes": 2, "seed": 0}
    steps.measure_trace(str(tmp_path / "prep.pt"), str(tmp_path / "p.pt"), str(tmp_path / "tt.pt"),
                        str(tmp_path / "tt.json"), settings, device="cpu", precision="fp32")
    record = read_json(tmp_path / "tt.json")
    rows = pd.DataFrame(record["checkpoints"])
    assert rows["step"].tolist() == trace["steps"] and record["kind"] == "train"
    final = read_json(tmp_path / "trained.json")
    assert rows["acc"].iloc[-1] == pytest.approx(final["acc"]) and rows["asr"].iloc[-1] == pytest.approx(final["asr"])
    assert (rows[["lambda_max", "trace_h"]].notna()).all().all()


def test_dynamics_csv_summary_and_figures(tmp_path):
    from backdoor import plots, tables
    from backdoor.io import write_json

    paths = []
    for kind, attack, defense, seed, per_epoch in [("train", "benign", None, 0, 4), ("train", "badnets", None, 0, 4),
                                                   ("train", "badnets", None, 1, 4), ("purify", "badnets", "ft", 0, None),
                                                   ("purify", "badnets", "fip", 0, None), ("purify", "badnets", "ft", 1, None)]:
        points = [{"step": s, "acc": 80.0 + s + seed, "asr": 90.0 - 10 * s, "ra": 5.0, "lambda_max": 10.0 * (s + 1),
                   "trace_h": 100.0 * (s + 1) if kind == "train" else float("nan"), "trace_h_se": 1.0}
                  for s in (0, 1, 2, 4)]
        record = {"kind": kind, "dataset": "toy", "model": "cnn", "attack": attack, "seed": seed, "checkpoints": points,
                  **({"defense": defense, "defense_seed": 0} if defense else {"steps_per_epoch": per_epoch})}
        paths.append(tmp_path / f"{len(paths)}.json")
        write_json(record, paths[-1])
    frame = tables.write_dynamics_csv(paths, tmp_path / "dynamics.csv")
    assert len(frame) == 24 and frame.loc[frame["kind"] == "train", "epoch"].max() == 1.0
    assert set(frame.loc[frame["kind"] == "train", "defense"]) == {"(training)"}
    train, purify = tables.dynamics_summary(frame, "train"), tables.dynamics_summary(frame, "purify")
    badnets_ft = purify[(purify["defense"] == "ft") & (purify["step"] == 0)].iloc[0]
    assert badnets_ft["n"] == 2 and badnets_ft["acc"] == 80.5 and (badnets_ft["acc_min"], badnets_ft["acc_max"]) == (80, 81)
    assert len(train) == 8 and len(purify) == 8
    for name, fig in [("t", plots.dynamics_training_figure(train)), ("p", plots.dynamics_purification_figure(purify, train))]:
        plots.save(fig, [tmp_path / f"{name}.png"])
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
