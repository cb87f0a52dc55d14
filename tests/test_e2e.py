"""End to end on a tiny config: the whole DAG under Snakemake and under DVC, identical bytes from
identical runs, sharing through DVC remotes (a folder and a moto S3 server on 127.0.0.1) with every
byte verified, experiments, and the guards: a stale dvc.yaml, invalid params and a second runner
stop before anything is deleted.

A few hundred Fashion-MNIST images (the Debian package's files) and one epoch keep it to minutes.
"""

import csv
import io
import json
import os
import sys
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import sigint_default

pytestmark = pytest.mark.e2e

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
ENV = {**os.environ, "PYTHON": sys.executable, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1", "CORES": "2", "OMP_NUM_THREADS": "1",
       "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
# Wall-clock records and what is made from them; every other output must be byte-identical.
TIMING_DERIVED = re.compile(r"\.time\.json$|^results/metrics\.csv$|^results/table\.(md|html)$|^results/tables/"
                            r"|^results/headline\.json$|^results/plots/runtime_asr\.csv$|^results/figures/runtime_asr\.")


def sh(cmd: str, cwd: Path, ok: bool = True, timeout: float = 900) -> str:
    run = subprocess.run(cmd, shell=True, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    if ok and run.returncode != 0:
        raise AssertionError(f"`{cmd}` failed in {cwd} ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}")
    if not ok and run.returncode == 0:
        raise AssertionError(f"`{cmd}` succeeded in {cwd}, but should have failed:\n{run.stdout[-3000:]}")
    return run.stdout + run.stderr


def tiny(params: dict) -> dict:
    params["splits"].update(clean_pool=100, train_limit=700, test_limit=300)
    params["study"].update(attacks=["benign", "badnets", "blend", "trojan"], defenses=["none", "ft", "fmp"],
                           clean_budgets=[50], seeds=[0], skip=[{"attacks": ["trojan"], "defenses": ["ft", "fmp"]}])
    params["attacks"]["trojan"]["iterations"] = 5  # a crafted attack: its craft step runs on the benign model
    params["train"]["epochs"] = 1
    params["defenses"]["ft"]["iterations"] = 5
    params["defenses"]["fmp"].update(iterations=5, chunk_images=64)  # a seed method: features and t-SNE
    params["figures"]["tsne"].update(attacks=["badnets", "blend"], clean_images=120, triggered_images=60)
    params["device"] = "cpu"
    params["analysis"]["smoothness"].update(enabled=True, images=50, power_iterations=5, probes=3)
    # checkpoints along the benign and badnets trainings (5 steps) and FT's and FMP's purifications
    params["figures"]["dynamics"].update(attacks=["badnets"], defenses=["ft"], train_every=3, purify_every=2)
    params["analysis"]["retune"].update(enabled=True, poisoned=3, epochs=1)  # P-ASR of every run, the benign floor
    # a reduced poisoning-rate study (profiles/poison_rate.yaml): badnets at 0 (the benign model) and 20%
    params["attacks"].update(badnets_r0={"type": "benign", "probe": "badnets"},
                             badnets_r20={"type": "badnets", "poison_rate": 0.2})
    params["study"]["attacks"] += RATE_PAIR
    params["study"]["skip"].append({"attacks": RATE_PAIR, "defenses": ["ft", "fmp"]})  # the undefended models
    return params


RATE_PAIR = ["badnets_r0", "badnets_r20"]


def nothing_to_do(cwd: Path) -> bool:
    return "Nothing to be done" in sh("snakemake -n --cores 1 all", cwd)


def dvc_clean(cwd: Path) -> bool:
    return "Data and pipelines are up to date" in sh("dvc status", cwd)


def files(cwd: Path) -> set[str]:
    return {str(p.relative_to(cwd)) for top in ("data", "results") if (cwd / top).exists()
            for p in (cwd / top).rglob("*") if p.is_file() and not p.name.endswith(".part")}


def locked_outs(cwd: Path) -> dict[str, str]:
    lock = yaml.safe_load((cwd / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for s in lock["stages"].values() for o in s.get("outs", [])}


def clone(origin: Path, dest: Path) -> Path:
    sh(f"git clone -q {origin} {dest}", dest.parent)
    return dest


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """A git+DVC project on the tiny config, computed by Snakemake and published to a folder remote."""
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
    sh("git init -q && git add -A && git commit -qm tiny", origin)
    sh("workflow/scripts/run_all.sh", origin, ok=False)  # dvc.yaml is stale: refused before any job
    assert not (origin / "data").exists()
    sh("make dvc.yaml PYTHON=python3 && git commit -qam 'dvc.yaml for the tiny study'", origin)
    sh("workflow/scripts/run_all.sh", origin)  # Snakemake computes, DVC records
    sh(f"make publish REMOTE={base / 'remote'}", origin)  # commits dvc.lock, pushes
    return origin


def test_snakemake_run_produces_the_study_outputs(origin):
    frame = pd.read_csv(origin / "results/metrics.csv")
    assert len(frame) == 3 * 3 + 1 + 2  # trojan and the rate pair × ft, fmp are skipped
    for column in ["dataset", "model", "attack", "defense", "seed", "defense_seed", "acc", "asr", "ra", "der",
                   "runtime_s", "n_clean", "precision", "threads", "lambda_max", "trace_h"]:
        assert column in frame.columns
    assert frame[["lambda_max", "trace_h"]].notna().all().all()  # (5 power iterations on 1-epoch models: any sign)
    assert frame["n_clean"].eq(50).all() and frame[["acc", "asr", "ra"]].apply(lambda c: c.between(0, 100)).all().all()
    assert frame["runtime_s"].gt(0).all()  # from the runs' .time.json
    none = frame[frame.defense == "none"]
    assert none["der"].eq(50).all()  # the undefended model against itself
    record = json.loads((origin / "results/runs/fashion_mnist/cnn/badnets/ft/n50_seed0_d0.json").read_text())
    assert "runtime_s" not in record and "threads" not in record and "acc" in record
    headline = json.loads((origin / "results/metrics.json").read_text())
    assert set(headline["fashion_mnist"]["cnn"]["n50"]["badnets"]["ft"]) == {"acc", "asr"}
    table = (origin / "results/table.md").read_text()
    assert "| badnets | ft |" in table
    for name in ["heatmaps", "runtime_asr", "smoothness", "tsne/fashion_mnist/cnn/badnets", "tsne/fashion_mnist/cnn/blend"]:
        for ext in ["png", "svg", "pdf"]:
            assert (origin / f"results/figures/{name}.{ext}").stat().st_size > 1000
    assert "<dc:date>" not in (origin / "results/figures/heatmaps.svg").read_text()
    dynamics = pd.read_csv(origin / "results/dynamics.csv")  # benign, badnets: steps 0 1 2 3 5; ft: 0 1 2 4 5
    assert len(dynamics) == 2 * 5 + 5 and set(dynamics["defense"]) == {"(training)", "ft"}
    assert dynamics["lambda_max"].notna().all() and dynamics.loc[dynamics["kind"] == "train", "trace_h"].notna().all()
    final = dynamics[(dynamics["defense"] == "ft") & (dynamics["step"] == 5)].iloc[0]
    assert final["acc"] == pytest.approx(record["acc"]) and final["asr"] == pytest.approx(record["asr"])
    for name in ["dynamics_training", "dynamics_purification", "retune"]:
        assert (origin / f"results/figures/{name}.png").stat().st_size > 1000
    attacked = frame[~frame.attack.isin(["benign", "badnets_r0"])]
    assert attacked[["p_asr", "p_acc", "p_asr_floor"]].notna().all().all()
    assert frame.loc[frame.attack.isin(["benign", "badnets_r0"]), "p_asr"].isna().all()
    # the rate pair: ASR and P-ASR against the rate, and the SoK checklist (no sweep: no stability table)
    assert (origin / "results/figures/poison_rate.png").stat().st_size > 1000
    checklist = (origin / "results/tables/checklist.md").read_text()
    assert "benign models: benign, badnets_r0" in checklist and "| ft |" in checklist
    assert not (origin / "results/tables/stability.md").exists()
    assert "P-ASR (ASR after the re-tuning attack" in table and "The floor: the benign model re-tuned" in table
    assert "dvc.lock" in sh("git show --stat HEAD", origin)
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


def test_clone_fetches_verified_results_and_neither_runner_wants_to_retrain(origin, tmp_path):
    consumer = clone(origin, tmp_path / "clone")
    sh("make fetch-results", consumer)
    assert dvc_clean(consumer) and nothing_to_do(consumer)
    assert locked_outs(consumer) == locked_outs(origin)


def test_figures_are_regenerated_from_the_pulled_metrics_alone(origin, tmp_path):
    consumer = clone(origin, tmp_path / "figures")
    with open(consumer / "src/backdoor/plots.py", "a") as fh:  # a researcher edits the figure code
        fh.write("\nopen('restyled-plots-were-used', 'w').close()\n")
    out = sh("dvc repro --pull --allow-missing report", consumer)
    assert "Running stage 'report'" in out
    assert (consumer / "restyled-plots-were-used").exists()  # the clone's code ran, not an installed copy
    assert "Running stage 'train" not in out and "Running stage 'purify" not in out
    for name in ["heatmaps", "runtime_asr", "dynamics_training", "dynamics_purification"]:
        assert (consumer / f"results/figures/{name}.png").stat().st_size > 1000
    assert (consumer / "results/metrics.csv").exists() and not (consumer / "results/dynamics/train").exists()
    out = sh("dvc repro --pull --allow-missing tsne@fashion_mnist-cnn-badnets", consumer)  # from stored features
    assert "Running stage 'tsne@fashion_mnist-cnn-badnets'" in out and "Running stage 'features" not in out
    assert (consumer / "results/figures/tsne/fashion_mnist/cnn/badnets.png").stat().st_size > 1000
    assert not (consumer / "results/models").exists() and not (consumer / "data/prepared").exists()
    assert not (consumer / "results/runs").exists()


def test_dvc_repro_from_scratch_gives_the_same_bytes_and_snakemake_agrees(origin, tmp_path):
    consumer = clone(origin, tmp_path / "repro")
    sh("dvc repro --no-run-cache", consumer, timeout=1800)  # compute everything, one stage at a time
    assert nothing_to_do(consumer)
    frame = pd.read_csv(consumer / "results/metrics.csv")
    assert len(frame) == 12
    ours, theirs = locked_outs(consumer), locked_outs(origin)
    assert ours.keys() == theirs.keys()
    differ = {path for path in ours if ours[path] != theirs[path]}
    assert differ and all(TIMING_DERIVED.search(p) for p in differ), f"not byte-identical: {sorted(differ)}"
    timing_free = ["acc", "asr", "ra", "der", "n_clean", "acc_before", "asr_before"]
    ref = pd.read_csv(origin / "results/metrics.csv")
    assert frame[timing_free].equals(ref[timing_free])
    sh("git checkout dvc.lock", consumer)  # the committed hashes; only timings differ from them
    assert "results/figures/heatmaps.png" not in sh("dvc status", consumer)


# -- sharing through S3 (moto) ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 with an empty bucket `study`; yields its endpoint URL."""
    if not shutil.which("moto_server"):
        pytest.skip("moto[server] is not installed (envs/requirements.txt)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)], stdout=open(log, "w"),
                              stderr=subprocess.STDOUT, env=ENV)
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    for _ in range(100):
        try:
            client.create_bucket(Bucket="study")
            break
        except Exception:  # noqa: BLE001 - the server is still starting
            time.sleep(0.1)
    yield endpoint, client
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def s3_producer(origin, s3, tmp_path_factory):
    """A collaborator's clone that fetched the results and published them to S3."""
    producer = clone(origin, tmp_path_factory.mktemp("s3") / "producer")
    sh("make fetch-results", producer)
    sh(f"make publish REMOTE=s3://study/tiny ENDPOINT={s3[0]}", producer)
    config = (producer / ".dvc/config").read_text()
    assert "s3://study/tiny" in config and "verify = true" in config
    return producer


def test_s3_round_trip_fresh_clone_redraws_the_figures_with_zero_training(s3_producer, tmp_path):
    start = time.perf_counter()
    consumer = clone(s3_producer, tmp_path / "consumer")
    cloned = time.perf_counter()
    sh("make fetch-results", consumer)
    fetched = time.perf_counter()
    out = sh("make figures", consumer)
    done = time.perf_counter()
    print(f"\nS3 round trip (tiny study): clone {cloned - start:.1f} s, fetch-results {fetched - cloned:.1f} s, "
          f"figures {done - fetched:.1f} s, total {done - start:.1f} s")
    assert "Running stage 'report'" in out and "Running stage 'train" not in out and "'purify" not in out
    assert dvc_clean(consumer) and nothing_to_do(consumer)
    assert locked_outs(consumer) == locked_outs(s3_producer)
    figures_only = clone(s3_producer, tmp_path / "figures-only")  # metrics only: no models downloaded
    out = sh("make figures", figures_only)
    assert "Running stage 'report'" in out and (figures_only / "results/figures/heatmaps.png").exists()
    assert not (figures_only / "results/models").exists() and not (figures_only / "data").exists()


def test_a_corrupt_object_in_the_remote_is_detected_never_accepted(s3_producer, s3, tmp_path):
    _, client = s3
    path = "results/models/fashion_mnist/cnn/badnets/seed0.json"
    digest = locked_outs(s3_producer)[path]
    key = f"tiny/files/md5/{digest[:2]}/{digest[2:]}"
    original = client.get_object(Bucket="study", Key=key)["Body"].read()
    client.put_object(Bucket="study", Key=key, Body=original.replace(b'"acc"', b'"acc_"'))
    try:
        consumer = clone(s3_producer, tmp_path / "consumer")
        out = sh("make fetch-results", consumer, ok=False)  # verify = true: the download is re-hashed
        assert path in out and "corrupt" in out
        assert not (consumer / path).exists()
        sh("dvc remote modify --local shared verify false", consumer)  # a consumer without verify ...
        sh("dvc pull", consumer)  # ... gets the corrupt file and DVC's status trusts it
        assert (consumer / path).read_bytes() != original and dvc_clean(consumer)
        out = sh("workflow/scripts/after_dvc.sh", consumer, ok=False)  # re-hashing against dvc.lock
        assert f"{path}: its content does not match dvc.lock" in out
        metadata = consumer / ".snakemake/metadata"
        assert not metadata.exists() or not any(metadata.iterdir())  # nothing reconciled on top of it
    finally:
        client.put_object(Bucket="study", Key=key, Body=original)


def test_a_corrupt_object_in_the_local_cache_is_detected_and_not_published(origin, tmp_path):
    consumer = clone(origin, tmp_path / "cache")
    sh("make fetch-results", consumer)
    path = "results/runs/fashion_mnist/cnn/badnets/ft/n50_seed0_d0.pt"
    digest = locked_outs(consumer)[path]
    obj = consumer / ".dvc/cache/files/md5" / digest[:2] / digest[2:]
    stat = obj.stat()
    obj.chmod(0o644)
    obj.write_bytes(obj.read_bytes()[:-10] + b"0123456789")  # bit rot: same size, same mtime
    os.utime(obj, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    out = sh("make verify", consumer, ok=False)
    assert f"the DVC cache object {obj} is corrupt" in out
    out = sh(f"make publish REMOTE={tmp_path / 'other-remote'}", consumer, ok=False)
    assert "corrupt" in out and not (tmp_path / "other-remote").exists()  # nothing pushed
    (consumer / path).unlink()
    sh(f"dvc checkout {path}", consumer)  # DVC restores the corrupt object and trusts its recorded hash
    assert dvc_clean(consumer)
    out = sh("workflow/scripts/after_dvc.sh", consumer, ok=False)
    assert f"{path}: its content does not match dvc.lock" in out


# -- experiments and guards ------------------------------------------------------------------------

def test_exp_run_reruns_only_the_ft_cells_and_exp_show_lists_them(origin, tmp_path):
    consumer = clone(origin, tmp_path / "exp")
    sh("make fetch-results", consumer)
    out = sh("dvc exp run -S ++defenses.ft.lr=0.02", consumer)  # ++: the key is at its default, absent
    ran = set(re.findall(r"Running stage '([^']+)'", out))
    ft = {f"{rule}@fashion_mnist-cnn-{a}-ft-50-0-0" for a in ["benign", "badnets", "blend"]
          for rule in ("purify", "smoothness")}
    ft |= {f"retune@fashion_mnist-cnn-{a}-ft-50-0-0" for a in ["badnets", "blend"]}  # not benign: no trigger
    ft.add("trace_purify@fashion_mnist-cnn-badnets-ft-50-0-0")  # figures.dynamics traces ft on badnets
    measured = {s for s in ran - ft if s.startswith("measure_trace@")}
    assert len(measured) == 1 and "ft" in next(iter(measured)), ran  # ... and scores that trace again
    assert ran == ft | measured | {"validate", "aggregate", "report"}, ran
    rows = list(csv.DictReader(io.StringIO(sh("dvc exp show --csv", consumer))))
    experiment = next(r for r in rows if r["Experiment"])  # the named experiment row
    assert float(experiment["defenses.ft.lr"]) == 0.02
    for attack in ["benign", "badnets", "blend"]:
        for metric in ["acc", "asr"]:
            assert 0 <= float(experiment[f"fashion_mnist.cnn.n50.{attack}.ft.{metric}"]) <= 100
    # a matrix change cannot be an experiment on a stale dvc.yaml: refused before anything is deleted
    before = files(consumer)
    out = sh("dvc exp run -S 'study.attacks=[benign,badnets]'", consumer, ok=False)
    assert "dvc.yaml is out of date" in out and "make dvc.yaml" in out
    assert before <= files(consumer)


def test_invalid_params_under_dvc_repro_delete_nothing(origin, tmp_path):
    consumer = clone(origin, tmp_path / "invalid")
    sh("make fetch-results", consumer)
    params = yaml.safe_load((consumer / "params.yaml").read_text())
    params["attacks"]["badnets"]["patch_size"] = 0
    (consumer / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = files(consumer)
    out = sh("dvc repro", consumer, ok=False)
    assert "attacks.badnets.patch_size" in out
    assert "Running stage 'poison" not in out and before == files(consumer)


def wait_for(condition, timeout=300.0):
    end = time.time() + timeout
    while time.time() < end:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_a_second_runner_gets_a_lock_error_and_deletes_nothing(origin, tmp_path):
    workspace = clone(origin, tmp_path / "race")
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen("snakemake --cores 1 all", shell=True, cwd=workspace, env=ENV, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=sigint_default)
    try:
        wait_for(lambda: (workspace / "data/prepared/fashion_mnist.pt").exists())
        before = files(workspace)
        out = sh("dvc repro", workspace, ok=False)
        assert "Unable to acquire lock" in out
        assert before <= files(workspace), "dvc repro deleted outputs of the running Snakemake"
    finally:
        os.killpg(first.pid, signal.SIGINT)
        first.wait(timeout=120)
    sh("snakemake --unlock --cores 1 all", workspace)
    # the first run may have finished meanwhile: give dvc repro work to do (every model again), so it is
    # still running below; with all of results/ gone it deletes nothing the snapshot below holds
    shutil.rmtree(workspace / "results", ignore_errors=True)
    log = open(tmp_path / "second.log", "w")
    first = subprocess.Popen("dvc repro", shell=True, cwd=workspace, env=ENV, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True, preexec_fn=sigint_default)
    try:
        # a model being trained (the study's or a traced one, which DVC may order first): minutes to go
        wait_for(lambda: re.search(r"Running stage '(trace_)?train@", (tmp_path / "second.log").read_text()))
        before = files(workspace)
        out = sh("snakemake --cores 1 all", workspace, ok=False)
        assert "DVC lock" in out or "LockException" in out
        assert before <= files(workspace), "snakemake deleted outputs of the running dvc repro"
    finally:
        os.killpg(first.pid, signal.SIGINT)
        first.wait(timeout=120)
