"""benchmarks/gpu_check.py's CPU dry run writes the JSON the GPU run will (every part, every defense
of the study, the legs agreeing), and benchmarks/project.py --gpu-measured projects from it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def check(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "check.json"
    run = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--quick", "--threads", "1",
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return out


def test_the_dry_run_writes_every_part(check):
    r = json.loads(check.read_text())
    assert r["schema"] == "gpu_check/1" and r["quick"] is True
    assert {"environment", "tolerance", "steps", "throughput", "packing", "seconds"} <= set(r)
    assert {"torch", "yaml"} <= set(r["environment"]["imported_packages"])
    assert not {"snakemake", "dvc"} & set(r["environment"]["imported_packages"])
    steps = r["steps"]
    defenses = yaml.safe_load((ROOT / "params.yaml").read_text())["study"]["defenses"]
    assert steps["defenses"] == defenses and set(steps["legs"]) == {"cpu", "device", "device_auto"}
    for leg in steps["legs"].values():
        assert set(leg["purify"]) == set(defenses) and {"train", "smoothness"} <= set(leg)
    assert not any(steps["errors"].values()), steps["errors"]
    cpu = steps["legs"]["cpu"]
    assert cpu["train"]["acc"] > 50 and cpu["train"]["asr"] > 50  # the synthetic task and backdoor are learned
    # on the CPU the "device" leg is the cpu leg again: equal scores, so the check must pass
    assert steps["agree"] is True and steps["forward"]["fp32_rel"] == 0.0
    assert steps["comparison"]["device"]["rows"].keys() == {"train", "smoothness", *defenses}
    assert steps["comparison"]["device_auto"]["agree"] is None  # reported, not judged
    tp = r["throughput"]
    assert [t["batch"] for t in tp["train"]] == [128, 256] and all(t["images_per_s"] > 0 for t in tp["train"])
    assert tp["train"][0]["shape"] == [3, 32, 32] and tp["train"][0]["channels_last"] is True
    assert tp["fip"]["s_per_iteration"] > 0 and tp["evaluate"]["images_per_s"] > 0
    runs = r["packing"]["runs"]
    assert [x["jobs"] for x in runs] == [1, 2] and runs[0]["gain"] == 1.0 and runs[1]["gain"] > 0
    assert all(x["startup_s"] > 0 for x in runs)


def test_project_uses_the_measured_gpu_numbers(check, tmp_path):
    """A fake finished reference study and a profile of the measured shape (PreAct-ResNet18 w16 on
    CIFAR-shaped images): the GPU column comes from the JSON, each row naming its basis."""
    results = tmp_path / "results"
    model = {"images_per_s": 1000.0, "runtime_s": 60.0, "train_seconds": 54.0}
    (results / "models/fashion_mnist/cnn/badnets").mkdir(parents=True)
    (results / "models/fashion_mnist/cnn/badnets/seed0.json").write_text(json.dumps(model))
    for defense in ("ft", "fip", "sibp"):
        run = {"defense_type": defense, "runtime_s": 20.0, "step_s": 23.0, "n_clean": 600, "threads": 1}
        folder = results / f"runs/fashion_mnist/cnn/badnets/{defense}"
        folder.mkdir(parents=True)
        (folder / "n600_seed0_d0.json").write_text(json.dumps(run))
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump({
        "study": {"datasets": ["cifar10"], "models": ["pr16"], "attacks": ["badnets"],
                  "defenses": ["ft", "fip", "sibp"], "clean_budgets": [500], "seeds": [0]},
        "models": {"pr16": {"type": "preact_resnet18", "width": 16}}, "train": {"epochs": 2}}))
    run = subprocess.run([sys.executable, "benchmarks/project.py", "--configfile", str(profile), "--reference",
                          str(results), "--gpu-measured", str(check), "--gpu-jobs", "2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert "(a --quick dry run: sizes cut)" in out and "(the measured shape)" in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert "measured img/s" in rows["train"] and "measured FIP step" in rows["purify fip"]
    assert "measured step" in rows["purify ft"] and "GPU-hours, 2 per GPU" in out
    assert "assumed" not in rows["train"] and "assumed:" in out  # what stays assumed is said once, below
