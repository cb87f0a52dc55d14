"""The two runners describe one DAG, and params.yaml is checked before any job runs."""

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow/scripts"))

import snake2dvc  # noqa: E402


def test_dvc_yaml_describes_the_same_jobs_as_the_snakefile():
    generated = snake2dvc.generate(ROOT / "Snakefile")
    committed = (ROOT / "dvc.yaml").read_text()
    assert generated == committed, "dvc.yaml is stale: run `make dvc.yaml` and commit it"


def snakemake_jobs_outputs(workdir: Path) -> set[str]:
    """Outputs of every job of `snakemake -F -n all`, read from Snakemake's own dry run."""
    out = subprocess.run(["snakemake", "-n", "-F", "--cores", "1", "all"], cwd=workdir, check=True,
                         capture_output=True, text=True).stdout
    outputs = set()
    for line in out.splitlines():
        if line.strip().startswith("output:"):
            outputs.update(p.strip() for p in line.split(":", 1)[1].split(","))
    return outputs


def test_every_dvc_stage_is_a_snakemake_job_and_back():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    dvc_outs = {o for s in stages.values() for o in s["outs"]}
    assert dvc_outs == snakemake_jobs_outputs(ROOT)
    for name, stage in stages.items():
        rule = name.split("-")[0]
        assert f"--allowed-rules {rule} " in stage["cmd"] and stage["cmd"].endswith(" ".join(stage["outs"]))


def test_invalid_params_stop_snakemake_before_any_job(project_copy):
    params = yaml.safe_load((project_copy / "params.yaml").read_text())
    params["attack_defaults"]["poison_rate"] = 1.5
    params["study"]["attacks"].append("badnet")
    (project_copy / "params.yaml").write_text(yaml.safe_dump(params))
    run = subprocess.run(["snakemake", "-n", "--cores", "1", "all"], cwd=project_copy,
                         capture_output=True, text=True)
    assert run.returncode != 0
    assert "attack_defaults.poison_rate: 1.5 is out of range" in run.stdout + run.stderr
    assert not (project_copy / "data").exists() and not (project_copy / "results").exists()


def test_the_default_profile_is_loaded_by_plain_snakemake_runs():
    """profiles/default/config.yaml (rerun-incomplete) applies to `snakemake`, run_all.sh and the jobs
    dvc repro starts, which all run plain `snakemake` in this folder."""
    out = subprocess.run(["snakemake", "-n", "--cores", "1", "all"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Using workflow specific profile profiles/default" in out.stdout + out.stderr
    profile = yaml.safe_load((ROOT / "profiles/default/config.yaml").read_text())
    assert profile["rerun-incomplete"] is True
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert all(s["cmd"].startswith("snakemake ") and "--workflow-profile" not in s["cmd"] for s in stages.values())
