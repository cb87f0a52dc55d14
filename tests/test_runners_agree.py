"""Both runners want the same jobs after an edit, on the default study's DAG: editing a defense's
module reruns exactly the purify jobs that import it (and what depends on them), editing plots.py
only the figures, and machine-local settings nothing.

No training: every output is a placeholder file, recorded by `snakemake --touch` (Snakemake's
metadata, code params included) and `dvc commit` (dvc.lock), so only the runners' bookkeeping runs.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e

ENV = {**os.environ, "PYTHON": sys.executable, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1"}


def sh(cmd: str, cwd: Path) -> str:
    run = subprocess.run(cmd, shell=True, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"`{cmd}` failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run.stdout


def dvc_stages(cwd: Path):
    """{stage: outs} and {stage: stages that depend on it, transitively}, as DVC resolves dvc.yaml."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(cwd)) as repo:
        graph = repo.index.graph  # edges: stage -> the stages it depends on
        outs = {s.name: [str(o.def_path) for o in s.outs] for s in graph.nodes}
        downstream = {s.name: {a.name for a in nx.ancestors(graph, s)} for s in graph.nodes}
    return outs, downstream


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from conftest import ROOT, project_files

    ws = tmp_path_factory.mktemp("agree") / "default"
    for rel in project_files():
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, ws / rel)
    sh("git init -q && git add -A && git commit -qm default", ws)
    outs, _ = dvc_stages(ws)
    for stage, paths in outs.items():
        for path in paths:
            target = ws / path
            if stage.startswith("download@"):  # a directory output
                target.mkdir(parents=True, exist_ok=True)
                (target / "placeholder").write_text(path)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                # json outputs hold json: the Snakefile remakes one that does not parse (a damaged file)
                text = json.dumps({"placeholder": path}) if path.endswith(".json") else f"placeholder for {path}"
                target.write_text(text + "\n")
    sh("snakemake --touch --forceall --cores 1 --quiet all", ws)
    sh("dvc commit -f -q", ws)
    assert "Nothing to be done" in sh("snakemake -n --cores 1 all", ws)
    assert "Data and pipelines are up to date" in sh("dvc status", ws)
    return ws


def wanted(ws: Path) -> tuple[set, set, set]:
    """(stages Snakemake would run, stages DVC reports changed, those plus what depends on them)."""
    outs, downstream = dvc_stages(ws)
    by_out = {path: stage for stage, paths in outs.items() for path in paths}
    dry = sh("snakemake -n --cores 1 all", ws)
    snakemake = {by_out[line.split(":", 1)[1].split(",")[0].strip()]
                 for line in dry.splitlines() if line.strip().startswith("output:")}
    changed = set(json.loads(sh("dvc status --json", ws))) - {"validate"}  # the guard re-checks any edit
    return snakemake, changed, changed | {d for s in changed for d in downstream[s]}


def per_run_analyses(purify: set, stages: set) -> set:
    """The smoothness and feature stages of exactly these purify runs that are in `stages`."""
    runs = {s.split("@", 1)[1] for s in purify}
    found = {s for s in stages if s.split("@")[0] in ("smoothness", "features")}
    assert all(s.split("@", 1)[1] in runs for s in found), found
    return found


def tsne_of(features: set) -> set:
    """t-SNE panels drawn from these feature stages (one per dataset-model-attack)."""
    return {"tsne@" + "-".join(s.split("@", 1)[1].split("-")[:3]) for s in features if s.startswith("features@")}


def edited(ws: Path, rel: str, text: str):
    path = ws / rel
    original = path.read_text()
    path.write_text(text(original) if callable(text) else original + text)
    return lambda: path.write_text(original)


def test_editing_a_defense_reruns_the_purify_jobs_that_import_it_under_both_runners(workspace):
    restore = edited(workspace, "src/backdoor/defenses/fip.py", "\n# an edit\n")
    try:
        snakemake, changed, with_downstream = wanted(workspace)
        status = subprocess.run([sys.executable, "workflow/scripts/dvc_status.py"], cwd=workspace, env=ENV,
                                capture_output=True, text=True)
    finally:
        restore()
    assert status.returncode == 1 and status.stdout.splitlines() == [  # one line per changed template
        "validate: 1 of 1 entry changed: deps modified src/backdoor",
        "purify: 24 of 120 entries changed: deps modified src/backdoor/defenses/fip.py"]
    purify = {s for s in with_downstream if s.startswith("purify@")}
    assert changed == purify and purify and all("-fip-" in s or "-fast_fip-" in s for s in purify)
    assert len(purify) == 2 * 4 * 3  # fip and fast_fip (which imports fip) on four attacks × three seeds
    analyses = per_run_analyses(purify, with_downstream)
    assert snakemake == with_downstream == purify | analyses | tsne_of(analyses) | {"aggregate", "report"}


def test_editing_a_defense_no_other_imports_reruns_only_its_jobs(workspace):
    restore = edited(workspace, "src/backdoor/defenses/nft.py", "\n# an edit\n")
    try:
        snakemake, changed, with_downstream = wanted(workspace)
    finally:
        restore()
    assert changed == {s for s in with_downstream if s.startswith("purify@") and "-nft-" in s} and len(changed) == 12
    analyses = per_run_analyses(changed, with_downstream)
    assert {s.split("@")[0] for s in analyses} == {"features"}  # nft is a t-SNE method; smoothness is off by default
    assert snakemake == with_downstream == changed | analyses | {"aggregate", "report"} | tsne_of(analyses)


@pytest.mark.parametrize("module", ["src/backdoor/training.py", "src/backdoor/attacks/wanet.py",
                                    "src/backdoor/data/prepare.py"])
def test_both_runners_want_the_same_jobs_after_any_library_edit(workspace, module):
    restore = edited(workspace, module, "\n# an edit\n")
    try:
        snakemake, changed, with_downstream = wanted(workspace)
    finally:
        restore()
    assert changed and snakemake == with_downstream


def test_editing_the_figure_code_reruns_only_the_figures(workspace):
    restore = edited(workspace, "src/backdoor/plots.py", "\n# an edit\n")
    try:
        snakemake, changed, with_downstream = wanted(workspace)
    finally:
        restore()
    tsne = {s for s in changed if s.startswith("tsne@")}
    assert tsne and snakemake == changed == with_downstream == {"report"} | tsne  # the report and the t-SNE panels


def test_machine_local_settings_invalidate_nothing(workspace):
    def local(text):
        params = yaml.safe_load(text)
        params["data"]["mirror"] = "/mnt/elsewhere/datasets"
        params["device"] = "cpu"
        return yaml.safe_dump(params, sort_keys=False)

    restore = edited(workspace, "params.yaml", local)
    try:
        snakemake, changed, with_downstream = wanted(workspace)
        validate = json.loads(sh("dvc status --json validate", workspace))
    finally:
        restore()
    assert snakemake == changed == with_downstream == set()
    assert "validate" in validate  # the guard re-checks the edited params.yaml; nothing depends on its answer
