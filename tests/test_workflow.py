"""The two runners describe one DAG, and params.yaml is checked before any job runs."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow/scripts"))

import snake2dvc  # noqa: E402

from backdoor import codedeps  # noqa: E402
from backdoor.params import step_keys  # noqa: E402


@pytest.fixture(scope="module")
def jobs():
    return snake2dvc.snakemake_jobs(ROOT / "Snakefile")


def test_dvc_yaml_is_generated_templated_and_short(jobs):
    generated = snake2dvc.generate(ROOT / "Snakefile", jobs)
    committed = (ROOT / "dvc.yaml").read_text()
    assert generated == committed, "dvc.yaml is stale: run `make dvc.yaml` and commit it"
    stages = yaml.safe_load(committed)["stages"]
    rules = {"download", "prepare", "poison", "train", "purify", "features", "tsne", "aggregate", "report"}
    # (the default has no crafted attack and no smoothness analysis: no craft or smoothness stages)
    assert set(stages) == rules | {snake2dvc.GUARD}  # one template per rule, plus the guard
    assert all("foreach" in stages[r] for r in rules - {"aggregate", "report"})
    assert len(committed.splitlines()) <= 500


def snakemake_jobs_outputs(workdir: Path) -> set[str]:
    """Outputs of every job of `snakemake -F -n all`, read from Snakemake's own dry run."""
    out = subprocess.run(["snakemake", "-n", "-F", "--cores", "1", "all"], cwd=workdir, check=True,
                         capture_output=True, text=True).stdout
    outputs = set()
    for line in out.splitlines():
        if line.strip().startswith("output:"):
            outputs.update(p.strip() for p in line.split(":", 1)[1].split(","))
    return outputs


def test_dvc_stages_are_the_snakemake_jobs_with_their_code(jobs):
    """DVC's own reading of dvc.yaml (templates resolved) against Snakemake's jobs: same outputs,
    inputs, params keys, and code deps equal to the job's `code` param (what Snakemake tracks)."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        stages = {s.addressing: s for s in repo.index.stages}
    assert set(stages) - {snake2dvc.GUARD} == {
        f"{j.rule.name}@" + "-".join(str(j.wildcards_dict[w]) for w in snake2dvc.ordered_wildcards(j.rule.wildcard_names))
        if j.wildcards_dict else j.rule.name for j in jobs}
    dvc_outs = {str(o.def_path) for name, s in stages.items() if name != snake2dvc.GUARD for o in s.outs}
    assert dvc_outs == snakemake_jobs_outputs(ROOT)
    for job in jobs:
        wc = {w: str(v) for w, v in job.wildcards_dict.items()}
        name = job.rule.name + ("@" + "-".join(wc[w] for w in snake2dvc.ordered_wildcards(wc)) if wc else "")
        stage = stages[name]
        files = {d.def_path for d in stage.deps if d.def_path != "params.yaml"}
        code = set(job.params.code)
        assert files == {snake2dvc.MARKER} | set(map(str, job.input)) | code, name
        assert code == set(codedeps.job_files(Path("workflow/scripts") / f"{job.rule.name}.py",
                                              job.params.get("values", {}), ROOT))
        params = [k for d in stage.deps if d.def_path == "params.yaml" for k in d.params]
        assert sorted(params) == sorted(step_keys(job.rule.name, **wc)), name
        assert f"--allowed-rules {job.rule.name} " in stage.cmd and stage.cmd.endswith(" ".join(map(str, job.output)))


def test_machine_local_settings_are_no_step_s_params():
    from backdoor.params import MACHINE_LOCAL

    for step in ["download", "prepare", "craft", "poison", "train", "purify", "aggregate", "report"]:
        keys = step_keys(step, dataset="d", model="m", attack="a", defense="f")
        assert not [k for k in keys if k.split(".")[0] in MACHINE_LOCAL], step


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
    cmds = [s.get("do", s)["cmd"] for name, s in stages.items() if name != snake2dvc.GUARD]  # foreach: do.cmd
    assert cmds and all(c.startswith("snakemake ") and "--workflow-profile" not in c for c in cmds)
def guard(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "workflow/scripts/guard.py", *args], cwd=cwd, capture_output=True,
                          text=True)


def test_guard_refuses_invalid_params_and_writes_nothing(project_copy):
    """(A stale dvc.yaml is refused too: tests/test_e2e.py, by run_all.sh and by `dvc exp run`.)"""
    params = yaml.safe_load((project_copy / "params.yaml").read_text())
    params["attack_defaults"]["poison_rate"] = 1.5
    (project_copy / "params.yaml").write_text(yaml.safe_dump(params))
    run = guard(project_copy, "--marker", "results/validated.txt")
    assert run.returncode == 1 and "attack_defaults.poison_rate: 1.5 is out of range" in run.stderr
    assert "Nothing was run or deleted" in run.stderr and not (project_copy / "results").exists()


def test_status_summary_has_one_line_per_stage_template():
    import dvc_status

    totals = dvc_status.entries(ROOT / "dvc.yaml")
    assert totals["purify"] == len(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["purify"]["foreach"])
    assert totals["validate"] == totals["aggregate"] == 1

    status = {f"purify@d-m-a-{d}-600-0-0": [{"changed deps": {"src/backdoor/defenses/fip.py": "modified"}}]
              for d in ["fip", "fast_fip"]}
    status["report"] = [{"changed deps": {"src/backdoor/plots.py": "modified"}}, "changed command"]
    status["purify@d-m-a-ft-600-0-0"] = [{"changed deps": {"params.yaml": {"defenses.ft": "modified"}}}]
    assert dvc_status.summary(status, {"purify": 4, "aggregate": 1, "report": 1}) == [
        "purify: 3 of 4 entries changed: deps modified src/backdoor/defenses/fip.py; params modified defenses.ft",
        "report: 1 of 1 entry changed: deps modified src/backdoor/plots.py; command"]


def planned_claims(*args: str, resource: str = "gpu") -> dict[str, set]:
    """rule → the values of ``resource`` its jobs claim in `snakemake -n <args> all` (None: no claim)."""
    out = subprocess.run(["snakemake", "-n", "--cores", "8", *args, "--", "all"], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    claims: dict[str, set] = {}
    for block in re.split(r"\n\[\w{3} \w{3} ", out.stdout + out.stderr):  # each job block starts with its date
        rule = next((line.split()[-1].rstrip(":") for line in block.splitlines()
                     if line.startswith(("rule ", "localrule "))), None)
        resources = next((line for line in block.splitlines() if line.strip().startswith("resources:")), "")
        if rule:
            claims.setdefault(rule, set()).add(next((r.split("=")[1] for r in resources.strip().split(", ")
                                                     if r.startswith(f"{resource}=")), None))
    return claims


@pytest.mark.parametrize("device, gpu", [("cuda", "1"), ("cpu", "0")])
def test_torch_jobs_claim_a_gpu_where_the_study_uses_one(device, gpu):
    """`--resources gpu=1` then never runs two torch jobs on one GPU; light rules claim none."""
    claims = planned_claims("--resources", "gpu=1", "--config", f"device={device}")
    for rule in ("train", "purify", "features"):  # craft and smoothness share their TORCH_RESOURCES
        assert claims[rule] == {gpu}, (rule, claims[rule])
    for rule in ("download", "prepare", "poison", "aggregate", "report", "tsne"):
        assert claims[rule] == {None}, (rule, claims[rule])


def test_gpu_slots_by_memory_pack_jobs_and_become_slurm_shards(tmp_path):
    """params.yaml gpu.<job>_mb: each torch job claims gpu_mem_mb, and a per-GPU budget plans (several
    jobs fit in it); with gpu.shard_mb they ask SLURM for GRES shards instead of a whole GPU."""
    gpu = yaml.safe_load((ROOT / "params.yaml").read_text())["gpu"]
    claims = planned_claims("--resources", "gpu_mem_mb=16000", "--config", "device=cuda", resource="gpu_mem_mb")
    assert claims["train"] == {str(gpu["train_mb"])} and claims["purify"] == {str(gpu["purify_mb"])}
    assert claims["features"] == {str(gpu["other_mb"])}
    assert 16000 // gpu["purify_mb"] >= 2  # the budget the docs use packs several purify jobs per GPU
    for rule in ("download", "prepare", "poison", "aggregate", "report"):
        assert claims[rule] == {None}, (rule, claims[rule])
    assert planned_claims("--config", "device=cpu", resource="gpu_mem_mb")["purify"] == {"0"}
    sharded = tmp_path / "shards.yaml"  # a profile, as --configfile (--config would pass 1000 as a string)
    sharded.write_text("device: cuda\ngpu: {shard_mb: 1000}\n")
    shards = planned_claims("--configfile", str(sharded), resource="gres")
    assert shards["train"] == {f"shard:{-(-gpu['train_mb'] // 1000)}"}
    assert shards["purify"] == {f"shard:{-(-gpu['purify_mb'] // 1000)}"} and shards["prepare"] == {None}
    whole = planned_claims("--configfile", str(sharded))
    assert whole["purify"] == {"0"}  # no --gpus=1 beside the shards (the SLURM plugin refuses both)
