"""End to end on a tiny config: the whole DAG under Snakemake and under DVC, and sharing through a
DVC remote (push, then a fresh clone pulls, reconciles, and regenerates figures without retraining).

A few hundred Fashion-MNIST images (the Debian package's files) and one epoch keep it to minutes.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.e2e

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1", "CORES": "2"}


def sh(cmd: str, cwd: Path) -> str:
    run = subprocess.run(cmd, shell=True, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=900)
    if run.returncode != 0:
        raise AssertionError(f"`{cmd}` failed in {cwd} ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}")
    return run.stdout + run.stderr


def tiny(params: dict) -> dict:
    params["splits"].update(clean_pool=100, train_limit=700, test_limit=300)
    params["study"].update(attacks=["benign", "badnets", "blend", "trojan"], defenses=["none", "ft", "fmp"],
                           clean_budgets=[50], skip=[{"attacks": ["trojan"], "defenses": ["ft", "fmp"]}])
    params["attacks"]["trojan"]["iterations"] = 5  # a crafted attack: its craft step runs on the benign model
    params["train"]["epochs"] = 1
    params["defenses"]["ft"]["iterations"] = 5
    params["defenses"]["fmp"].update(iterations=5, chunk_images=64)  # a seed method: features and t-SNE
    params["figures"]["tsne"].update(clean_images=120, triggered_images=60)
    params["device"] = "cpu"
    return params


def nothing_to_do(cwd: Path) -> bool:
    return "Nothing to be done" in sh("snakemake -n --cores 1 all", cwd)


def dvc_clean(cwd: Path) -> bool:
    return "Data and pipelines are up to date" in sh("dvc status", cwd)


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """A git+DVC project on the tiny config, computed by Snakemake and pushed to a local remote."""
    if not FMNIST.exists():
        pytest.skip("the Debian package dataset-fashion-mnist is not installed (make setup installs it)")
    from conftest import ROOT, project_files

    base = tmp_path_factory.mktemp("e2e")
    origin = base / "origin"
    for rel in project_files():
        (origin / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, origin / rel)
    params = tiny(yaml.safe_load((origin / "params.yaml").read_text()))
    (origin / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("make dvc.yaml PYTHON=python3", origin)
    sh(f"git init -q && dvc remote add -d shared {base / 'remote'} && git add -A && git commit -qm tiny", origin)
    sh("workflow/scripts/run_all.sh", origin)  # Snakemake computes, DVC records
    sh("git add dvc.lock && git commit -qm results && dvc push", origin)
    return origin


def test_snakemake_run_produces_the_study_outputs(origin):
    frame = pd.read_csv(origin / "results/metrics.csv")
    assert len(frame) == 3 * 3 + 1  # trojan × ft, fmp are skipped
    for column in ["dataset", "model", "attack", "defense", "seed", "acc", "asr", "ra", "der", "runtime_s", "n_clean"]:
        assert column in frame.columns
    assert frame["n_clean"].eq(50).all() and frame[["acc", "asr", "ra"]].apply(lambda c: c.between(0, 100)).all().all()
    none = frame[frame.defense == "none"]
    assert none["der"].eq(50).all()  # the undefended model against itself
    table = (origin / "results/table.md").read_text()
    assert "| badnets | ft |" in table
    for name in ["heatmaps", "runtime_asr", "smoothness", "tsne/fashion_mnist/cnn/badnets", "tsne/fashion_mnist/cnn/blend"]:
        for ext in ["png", "svg", "pdf"]:
            assert (origin / f"results/figures/{name}.{ext}").stat().st_size > 1000
    assert r"\begin{tabular}" in (origin / "results/tables/fashion_mnist-cnn-n50.tex").read_text()


def test_html_report_builds_as_the_readme_says(origin, tmp_path):
    out = tmp_path / "report.html"
    sh(f"snakemake --report {out}", origin)  # no --cores: exactly the README's command
    html = out.read_text()
    for part in ["heatmaps.png", "runtime_asr.png", "smoothness.png", "badnets.png", "table.html", "t-SNE"]:
        assert part in html
    commit = sh("git rev-parse --short=12 HEAD", origin).strip()
    assert commit in html and "clean budgets 50" in html


def test_dvc_shows_the_headline_metrics_and_plots(origin):
    headline = json.loads((origin / "results/headline.json").read_text())
    ft_asr = headline["fashion_mnist-cnn-n50"]["ft"]["asr"]
    assert f"fashion_mnist-cnn-n50.ft.asr" in sh("dvc metrics show", origin)
    assert str(ft_asr) in sh("dvc exp show --no-pager --csv", origin)
    assert "runtime_asr.csv" in sh("dvc plots show --json", origin)


def test_after_snakemake_dvc_has_nothing_to_do(origin):
    assert dvc_clean(origin) and nothing_to_do(origin)


def test_clone_pulls_and_neither_runner_wants_to_retrain(origin, tmp_path):
    clone = tmp_path / "clone"
    sh(f"git clone -q {origin} {clone}", tmp_path)
    sh("dvc pull -q", clone)
    sh("workflow/scripts/after_dvc.sh", clone)
    assert dvc_clean(clone) and nothing_to_do(clone)


def test_figures_are_regenerated_from_the_pulled_metrics_alone(origin, tmp_path):
    clone = tmp_path / "figures"
    sh(f"git clone -q {origin} {clone}", tmp_path)
    with open(clone / "src/backdoor/plots.py", "a") as fh:  # a researcher edits the figure code
        fh.write("\nopen('restyled-plots-were-used', 'w').close()\n")
    out = sh("dvc repro --pull --allow-missing report", clone)
    assert "Running stage 'report'" in out
    assert (clone / "restyled-plots-were-used").exists()  # the clone's code ran, not an installed copy
    assert "Running stage 'train" not in out and "Running stage 'purify" not in out
    for name in ["heatmaps", "runtime_asr"]:
        assert (clone / f"results/figures/{name}.png").stat().st_size > 1000
    assert (clone / "results/metrics.csv").exists()
    out = sh("dvc repro --pull --allow-missing tsne-fashion_mnist-cnn-badnets", clone)  # from stored features
    assert "Running stage 'tsne-fashion_mnist-cnn-badnets'" in out and "Running stage 'features" not in out
    assert (clone / "results/figures/tsne/fashion_mnist/cnn/badnets.png").stat().st_size > 1000
    assert not (clone / "results/models").exists() and not (clone / "data/prepared").exists()
    assert not (clone / "results/runs").exists()


def test_dvc_repro_from_scratch_then_snakemake_has_nothing_to_do(origin, tmp_path):
    clone = tmp_path / "repro"
    sh(f"git clone -q {origin} {clone}", tmp_path)
    sh("dvc repro --no-run-cache", clone)  # compute everything, no shortcuts through the cache
    assert nothing_to_do(clone) and dvc_clean(clone)
    frame = pd.read_csv(clone / "results/metrics.csv")
    assert len(frame) == 10
