"""Does a purification last (issue 24): rate-swept attack ids, the poisoning-rate profile, the
stability score on constructed data with known answers, the SoK checklist and the figure, and that
the default study gets none of them."""

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from snakemake.utils import update_config

from backdoor import params as P
from backdoor import report, stats, tables
from conftest import ROOT

CONFIG = yaml.safe_load((ROOT / "params.yaml").read_text())
FIGURES = P.section(CONFIG, "figures").to_dict()
RUNS = [0, 1, 2]


def row(attack, defense, seed, **values):
    base = dict(dataset="fashion_mnist", model="cnn", attack=attack, defense=defense, clean_budget=600, seed=seed,
                defense_seed=0, acc=90.0, asr=50.0, ra=40.0, der=60.0, runtime_s=10.0, n_clean=600,
                acc_before=91.0, asr_before=99.0, ra_before=1.0, defense_type=defense.split("_")[0])
    return {**base, **values}


def test_rate_sweep_reads_the_rate_from_the_id():
    ids = ["benign", "badnets_r0", "badnets_r0p5", "badnets_r20", "blend_r5", "badnets_all2all", "sig_r0", "sig_r10"]
    assert tables.rate_sweep(ids) == {"badnets": {"badnets_r0": 0.0, "badnets_r0p5": 0.5, "badnets_r20": 20.0},
                                      "sig": {"sig_r0": 0.0, "sig_r10": 10.0}}  # one rate is no sweep
    assert tables.rate_sweep(CONFIG["study"]["attacks"]) == {}  # the default study has none


def test_poison_rate_profile_ids_match_their_settings():
    profile = yaml.safe_load((ROOT / "profiles/poison_rate.yaml").read_text())
    config = yaml.safe_load((ROOT / "params.yaml").read_text())
    update_config(config, profile)
    study = config["study"]
    sweep = tables.rate_sweep(study["attacks"])
    assert set(sweep) == {"badnets", "blend", "sig"} and len(study["seeds"]) >= 3
    assert config["analysis"]["retune"]["enabled"]
    for family, ids in sweep.items():
        assert sorted(ids.values()) == [0, 0.5, 1, 5, 10, 20]
        for attack, rate in ids.items():
            spec = P.entry(config, "attacks", attack)
            if rate == 0:  # the benign model, scored with the family's trigger
                assert spec.kind == "benign" and spec.probe == family
                continue
            assert spec.kind == family
            # sig is clean-label: the rate is the share of the target class (1 of 10 balanced classes)
            share = 10 if spec.clean_label else 1
            assert spec.poison_rate == pytest.approx(rate / 100 / share), attack
    wanted = {"none", "ft", "fst", "fip", "fast_fip", "nft", "fmp", "sibp"}
    if "pam" in config["defenses"]:
        wanted.add("pam")  # the profile's comment: add pam once params.yaml has it
    assert wanted <= set(study["defenses"]) and set(study["defenses"]) <= set(config["defenses"])


# -- stability -----------------------------------------------------------------------------------

def sweep_frame() -> pd.DataFrame:
    """ft at its study value and two variants: ASR +10 and −4 (MAD 7 on every run); ACC −1/−3 on run
    0, −2/−4 on run 1, −3/−5 on run 2 (MAD 2, 3, 4: mean 3); the benign model moves a lot (ignored)."""
    rows = []
    for seed in RUNS:
        for attack in ("benign", "badnets", "blend"):
            asr = 30.0 + seed + (attack == "blend") * 20
            shift = 40.0 if attack == "benign" else 0.0
            rows.append(row(attack, "ft", seed, asr=asr, acc=90.0))
            rows.append(row(attack, "ft_lr_0p1", seed, asr=asr + 10 + shift, acc=89.0 - seed))
            rows.append(row(attack, "ft_lr_0p001", seed, asr=asr - 4 - shift, acc=87.0 - seed))
            rows.append(row(attack, "fip", seed, asr=5.0, acc=88.0))  # no variants: no score
    return pd.DataFrame(rows)


SWEEPS = {"ft": {"knob": "lr", "defenses": ["ft", "ft_lr_0p1", "ft_lr_0p001"]},
          "fip": {"knob": "eta_f", "defenses": ["fip"]}}


def test_stability_is_the_mean_absolute_difference_from_the_studys_value():
    table = stats.stability(sweep_frame(), SWEEPS, benign=("benign",))
    assert table["method"].tolist() == ["ft"]
    ft = table.iloc[0]
    assert (ft["knob"], ft["values"], ft["runs"], ft["attacks"]) == ("lr", 3, 3, "badnets blend")
    assert (ft["mad_asr"], ft["mad_asr_lo"], ft["mad_asr_hi"]) == (7.0, 7.0, 7.0)  # no spread: a point
    assert ft["mad_acc"] == pytest.approx(3.0) and 2.0 <= ft["mad_acc_lo"] < 3.0 < ft["mad_acc_hi"] <= 4.0
    again = stats.stability(sweep_frame(), SWEEPS, benign=("benign",))
    pd.testing.assert_frame_equal(table, again)  # the seeded bootstrap: same data, same interval


def test_stability_without_the_studys_value_or_variants_is_left_out():
    frame = sweep_frame()
    assert stats.stability(frame[frame.defense != "ft"], SWEEPS).empty
    assert stats.stability(frame[~frame.defense.str.startswith("ft_")], SWEEPS).empty


# -- the checklist -------------------------------------------------------------------------------

def checklist_frame(retune=True) -> pd.DataFrame:
    frame = sweep_frame()
    frame = pd.concat([frame, frame[frame.defense == "ft"].assign(defense="none", acc_before=91.0, acc=91.0,
                                                                   asr=99.0, runtime_s=0.0)])
    frame.loc[frame.defense == "ft", "acc_before"] = 92.0  # ACC drop 2 on every model
    frame.loc[frame.defense == "ft", "runtime_s"] = 20.0 + frame.loc[frame.defense == "ft", "seed"]
    if retune:
        frame["p_asr"] = np.where(frame.attack == "benign", np.nan, frame["asr"] + 30)
        frame["p_asr_floor"] = np.where(frame.attack == "benign", np.nan, 12.0)
    return frame.reset_index(drop=True)


def test_checklist_from_a_constructed_metrics_csv(tmp_path):
    frame = checklist_frame()
    frame.to_csv(tmp_path / "metrics.csv", index=False)
    frame = pd.read_csv(tmp_path / "metrics.csv")  # as the report step reads it
    variants = ["ft_lr_0p1", "ft_lr_0p001"]
    text = tables.checklist_markdown(frame, ("benign",), SWEEPS, variants)
    table = tables.checklist(frame[~frame.defense.isin(variants)], ("benign",),
                             stats.stability(frame, SWEEPS, ("benign",))).set_index("defense")
    assert table.index.tolist() == ["ft", "fip", "none"]  # study order, no sweep variants
    ft, fip = table.loc["ft"], table.loc["fip"]
    assert ft["ACC drop on the benign model"] == "2.00 [2.00, 2.00]"
    assert fip["ACC drop on the benign model"] == "3.00 [3.00, 3.00]"
    assert ft["ASR (%)"].startswith("41.00 [") and fip["ASR (%)"] == "5.00 [5.00, 5.00]"  # (30+1) and (50+1)
    assert ft["P-ASR (%)"].startswith("71.00 [")
    assert ft["stability: MAD of ASR"] == "7.00 [7.00, 7.00]" and fip["stability: MAD of ASR"] == "—"
    assert ft["seconds per job"].startswith("21.0 [") and ft["runs"] == 3
    assert "| ft | 2.00 [2.00, 2.00] |" in text and "arXiv 2511.13143" in text
    # no P-ASR, no benign model: those columns say "—"
    bare = checklist_frame(retune=False)
    bare = tables.checklist(bare[(bare.attack != "benign") & ~bare.defense.isin(variants)], ("benign",))
    assert set(bare["P-ASR (%)"]) == {"—"} and set(bare["ACC drop on the benign model"]) == {"—"}
    assert set(bare["stability: MAD of ASR"]) == {"—"}


# -- the report step: figure and tables, byte for byte -------------------------------------------

def rate_frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for family in ("badnets", "sig"):
        for rate, tag in ((0, "0"), (0.5, "0p5"), (5, "5"), (20, "20")):
            for defense in ("none", "ft", "fst", "fip"):
                for seed in RUNS:
                    asr = (2.0 if rate == 0 else min(99, 40 + 3 * rate)) * (1 if defense == "none" else 0.3)
                    p_asr = np.nan if rate == 0 else min(100, asr + 40 + rng.normal(0, 5))
                    rows.append(row(f"{family}_r{tag}", defense, seed, asr=asr + rng.normal(0, 2), p_asr=p_asr,
                                    p_asr_floor=np.nan if rate == 0 else 8 + rng.normal(0, 1),
                                    runtime_s=0.0 if defense == "none" else 30 + rng.normal(0, 1)))
    return pd.DataFrame(rows)


def write_lasting(frame: pd.DataFrame, out_dir: Path, benign) -> dict:
    out_dir.mkdir()
    frame.to_csv(out_dir / "metrics.csv", index=False, float_format="%.4f")
    out = {"table": out_dir / "table.md", "html": out_dir / "table.html", "headline": out_dir / "headline.json",
           "stability": out_dir / "stability.md", "checklist": out_dir / "checklist.md",
           "poison_rate": out_dir / "poison_rate.png",
           "poison_rate_vector": [out_dir / "poison_rate.svg", out_dir / "poison_rate.pdf"]}
    sweeps = {"ft": {"knob": "lr", "defenses": ["ft", "ft_lr_0p1"]}}
    report.write(out_dir / "metrics.csv", out, figures=FIGURES, benign=benign, sweeps=sweeps,
                 sweep_params={"ft": {"lr": 0.01}, "ft_lr_0p1": {"lr": 0.1}})
    return out


def test_report_draws_the_rate_figure_and_writes_the_tables_byte_identically(tmp_path):
    frame = rate_frame()
    frame = pd.concat([frame, frame[frame.defense == "ft"].assign(defense="ft_lr_0p1", asr=frame["asr"] + 5)])
    benign = ("badnets_r0", "sig_r0")
    first, second = write_lasting(frame, tmp_path / "a", benign), write_lasting(frame, tmp_path / "b", benign)
    for key in ("stability", "checklist", "poison_rate"):
        for a, b in zip([first[key], *first.get(f"{key}_vector", [])], [second[key], *second.get(f"{key}_vector", [])]):
            assert a.read_bytes() == b.read_bytes(), a.name
    with Image.open(first["poison_rate"]) as im:
        assert im.size[0] / 300 <= 7.2 and first["poison_rate"].stat().st_size > 20_000
    svg = first["poison_rate_vector"][0].read_text()
    assert "sig (% of the target class)" in svg and "P-ASR after re-tuning" in svg and "floor" in svg
    checklist = first["checklist"].read_text()
    assert "benign models: badnets_r0, sig_r0" in checklist and "| ft_lr_0p1 |" not in checklist
    assert "| ft | lr (2) | 5.00 [5.00, 5.00] |" in first["stability"].read_text()
    summary = tables.poison_rate_summary(frame)
    assert sorted(summary.loc[summary.family == "sig", "rate"].unique()) == [0, 0.5, 5, 20]
    assert summary.loc[summary.rate == 0, "p_asr"].isna().all()  # the benign model is not re-tuned


@pytest.mark.parametrize("profile,present", [(None, []), ("poison_rate", ["results/figures/poison_rate.png",
                                                                           "results/tables/checklist.md"]),
                                             ("tradeoff", ["results/tables/stability.md",
                                                           "results/tables/checklist.md"])])
def test_the_new_outputs_appear_only_with_their_data(profile, present):
    cmd = ["snakemake", "-n", "--cores", "1", "all"] + (["--configfile", f"profiles/{profile}.yaml"] if profile else [])
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    for path in ["results/figures/poison_rate.png", "results/tables/checklist.md", "results/tables/stability.md"]:
        assert (path in out.stdout) == (path in present), (profile, path)
