"""Faults on a tiny study: killed jobs, a killed runner, an interrupted run, damaged raw files, bad
params.yaml edits.

- kill -9 of a train job and of a purify job while they write their outputs: nothing that looks
  complete is left, and rerunning gives results identical to an undisturbed run;
- kill -9 of the Snakemake process itself: `run_all.sh` clears the stale lock (saying so) and
  finishes; a live runner or orphaned job is named instead;
- SIGINT to a running `run_all.sh` (what `make study` runs) as a model is put in place: running it
  again finishes the study (the default profile's rerun-incomplete);
- a corrupted or truncated raw file: a checksum error naming the file and the fix, from the download
  step (a damaged mirror) and from prepare when it reruns (a damaged data/raw);
- BAD_EDITS: each bad params.yaml edit is refused before any job, naming the key.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import ROOT, project_files, sigint_default

pytestmark = pytest.mark.e2e

FMNIST = Path("/usr/share/datasets/fashion-mnist")
ENV = {**os.environ, "PYTHON": sys.executable, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1", "CORES": "1", "OMP_NUM_THREADS": "1"}
RESULT_COLUMNS = ["dataset", "model", "attack", "defense", "clean_budget", "seed", "defense_seed", "acc", "asr",
                  "ra", "der", "n_clean"]


def tiny(params: dict) -> dict:
    params["splits"].update(clean_pool=100, train_limit=700, test_limit=300)
    params["study"].update(attacks=["benign", "badnets"], defenses=["none", "ft"], clean_budgets=[50], seeds=[0],
                           skip=[])
    params["train"]["epochs"] = 1
    params["defenses"]["ft"]["iterations"] = 5
    params["device"] = "cpu"
    params["precision"] = "fp32"
    return params


def project(base: Path, name: str) -> Path:
    """A git + DVC copy of this checkout running the tiny study (no data, results or logs)."""
    dest = base / name
    for rel in project_files():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    params = tiny(yaml.safe_load((dest / "params.yaml").read_text()))
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run("python3 workflow/scripts/snake2dvc.py > dvc.yaml && git init -q && git add -A && git commit -qm tiny",
        dest)
    return dest


def run(cmd: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, shell=True, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=900)
    if ok and done.returncode != 0:
        raise AssertionError(f"`{cmd}` failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return done


def results(cwd: Path) -> tuple[pd.DataFrame, dict[str, dict]]:
    """metrics.csv without timings, and every trained or purified model's tensors."""
    frame = pd.read_csv(cwd / "results/metrics.csv")[RESULT_COLUMNS]
    models = {str(p.relative_to(cwd)): torch.load(p, weights_only=False)["state_dict"]
              for p in sorted((cwd / "results").rglob("*.pt")) if p.parent.name != "assets"}
    return frame, models


def assert_same_results(cwd: Path, reference: Path) -> None:
    frame, models = results(cwd)
    ref_frame, ref_models = results(reference)
    pd.testing.assert_frame_equal(frame, ref_frame)
    assert models.keys() == ref_models.keys() and len(models) == 2 + 4
    for name, state in models.items():
        assert state.keys() == ref_models[name].keys()
        assert all(torch.equal(state[k], ref_models[name][k]) for k in state), name


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    if not (FMNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("the Debian package dataset-fashion-mnist is not installed (make setup installs it)")
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def reference(base):
    """The tiny study, undisturbed."""
    ref = project(base, "reference")
    run("workflow/scripts/run_all.sh", ref)
    return ref


# -- kill -9 while a job writes ------------------------------------------------------------------

class Inotify:
    """Linux inotify on one folder: ``wait_for(suffix)`` blocks until a file ending so is created (or,
    with ``renamed``, renamed into the folder)."""

    IN_CREATE, IN_MOVED_TO = 0x100, 0x80

    def __init__(self, folder: Path, renamed: bool = False):
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = self.libc.inotify_init()
        mask = self.IN_MOVED_TO if renamed else self.IN_CREATE
        if self.fd < 0 or self.libc.inotify_add_watch(self.fd, str(folder).encode(), mask) < 0:
            raise OSError(ctypes.get_errno(), f"inotify on {folder}")

    def wait_for(self, suffix: str) -> str:
        while True:
            buf = os.read(self.fd, 65536)
            offset = 0
            while offset < len(buf):
                _, _, _, length = (int.from_bytes(buf[offset + i:offset + i + 4], "little") for i in (0, 4, 8, 12))
                name = buf[offset + 16:offset + 16 + length].rstrip(b"\0").decode()
                offset += 16 + length
                if name.endswith(suffix):
                    return name

    def close(self):
        os.close(self.fd)


def job_process(cwd: Path, script: str, timeout: float = 300) -> int:
    """The pid of the running job of ``script`` (e.g. train.py) started by Snakemake in ``cwd``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if any(arg.endswith(f".{script}".encode()) for arg in cmdline) and \
                        Path(os.readlink(f"/proc/{pid}/cwd")) == cwd:
                    return int(pid)
            except OSError:
                continue
        time.sleep(0.05)
    raise AssertionError(f"no {script} job started in {cwd}")


def kill_while_writing(cwd: Path, folder: str, script: str) -> tuple[subprocess.CompletedProcess, str]:
    """Run the study and kill -9 the ``script`` job writing into ``folder`` once its first output file
    (a temporary ``.part`` of io.atomic_path) appears: in trials, before that file was renamed into place
    7 times in 8, else just after, while the job wrote its second output. Returns Snakemake's result and
    that file's name."""
    target = cwd / folder
    proc = subprocess.Popen("snakemake --cores 1 all", shell=True, cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    while not target.is_dir():  # Snakemake makes the output folder just before it starts the job
        assert proc.poll() is None and time.monotonic() < deadline, "the study ended before the job started"
        time.sleep(0.02)
    watch = Inotify(target)
    try:
        pid = job_process(cwd, script)
        part = watch.wait_for(".part")
        os.kill(pid, signal.SIGKILL)
    finally:
        watch.close()
    out, _ = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, ""), part


def test_kill_9_of_train_and_purify_mid_write_leaves_nothing_complete_and_rerun_is_identical(base, reference):
    cwd = project(base, "killed")
    models = "results/models/fashion_mnist/cnn/badnets"
    killed, part = kill_while_writing(cwd, models, "train.py")
    assert killed.returncode != 0 and "Error in rule train" in killed.stdout, killed.stdout[-3000:]
    assert part.startswith(".seed0.pt.")  # killed while writing the model
    assert not (cwd / models / "seed0.pt").exists() and not (cwd / models / "seed0.json").exists()

    runs = "results/runs/fashion_mnist/cnn/badnets/ft"
    killed, part = kill_while_writing(cwd, runs, "purify.py")
    assert killed.returncode != 0 and "Error in rule purify" in killed.stdout, killed.stdout[-3000:]
    assert part.startswith(".n50_seed0_d0.pt.")
    assert not any((cwd / runs).glob("n50_seed0_d0.*"))
    assert (cwd / models / "seed0.pt").exists()  # what finished before the kill is kept

    run("snakemake --cores 1 all", cwd)
    assert_same_results(cwd, reference)


# -- Ctrl-C during `make study` -----------------------------------------------------------------

def test_sigint_during_the_study_then_the_same_command_finishes_it(base, reference):
    """Ctrl-C just after a train job put its model in place: the model exists but Snakemake marks it
    incomplete, which stops a plain rerun unless the default profile's rerun-incomplete is loaded."""
    cwd = project(base, "interrupted")
    models = cwd / "results/models/fashion_mnist/cnn/badnets"
    models.mkdir(parents=True)  # watched before the study starts: a fast train job cannot slip past the watch
    watch = Inotify(models, renamed=True)
    proc = subprocess.Popen("workflow/scripts/run_all.sh", shell=True, cwd=cwd, env=ENV, start_new_session=True,
                            preexec_fn=sigint_default,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        watch.wait_for("seed0.pt")
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does: the whole foreground group
    finally:
        watch.close()
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode != 0, out[-3000:]
    assert (models / "seed0.pt").exists() and any((cwd / ".snakemake/incomplete").iterdir())
    plain = run("snakemake -n --cores 1 all --workflow-profile none", cwd, ok=False)
    assert "IncompleteFilesException" in plain.stdout + plain.stderr  # what the profile is needed for

    again = run("workflow/scripts/run_all.sh", cwd)  # make study's command, no extra flags
    assert "Using workflow specific profile profiles/default" in again.stdout + again.stderr
    assert_same_results(cwd, reference)


# -- damaged raw files ----------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["corrupted", "truncated"])
def test_damaged_mirror_file_is_refused_by_download_naming_the_file_and_the_fix(base, damage):
    cwd = project(base, f"mirror-{damage}")
    mirror = cwd / "mirror"
    shutil.copytree(FMNIST, mirror)
    victim = mirror / "train-labels-idx1-ubyte.gz"
    data = bytearray(victim.read_bytes())
    if damage == "corrupted":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[len(data) // 2:]
    victim.write_bytes(bytes(data))
    params = yaml.safe_load((cwd / "params.yaml").read_text())
    params["data"]["mirror"] = str(mirror)
    (cwd / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    done = run("snakemake --cores 1 data/prepared/fashion_mnist.pt", cwd, ok=False)
    log = (cwd / "logs/download/fashion_mnist.log").read_text()
    assert done.returncode != 0
    assert f"checksum mismatch for {victim}" in log and "set data.mirror" in log
    assert f"checksum mismatch for {victim}" in done.stdout + done.stderr  # the failed job's log is shown
    assert not (cwd / "data/raw/fashion_mnist").exists() and not (cwd / "data/prepared").exists()


@pytest.mark.parametrize("damage", ["corrupted", "truncated"])
def test_damaged_raw_file_is_refused_when_prepare_reruns(base, damage):
    cwd = project(base, f"raw-{damage}")
    run("snakemake --cores 1 data/prepared/fashion_mnist.pt", cwd)
    victim = cwd / "data/raw/fashion_mnist/t10k-images-idx3-ubyte.gz"
    data = bytearray(victim.read_bytes())
    if damage == "corrupted":
        data[-100] ^= 0xFF
    else:
        del data[len(data) // 3:]
    victim.write_bytes(bytes(data))
    before = (cwd / "data/prepared/fashion_mnist.pt").read_bytes()
    done = run("snakemake --cores 1 --forcerun prepare -- data/prepared/fashion_mnist.pt", cwd, ok=False)
    log = (cwd / "logs/prepare/fashion_mnist.log").read_text()
    assert done.returncode != 0
    assert f"checksum mismatch for data/raw/fashion_mnist/{victim.name}" in log
    assert "Delete the folder data/raw/fashion_mnist and run the study again" in log
    assert not (cwd / "data/prepared/fashion_mnist.pt").exists() or \
        (cwd / "data/prepared/fashion_mnist.pt").read_bytes() == before  # nothing built from the bad file
    shutil.rmtree(cwd / "data/raw/fashion_mnist")  # the fix the message gives
    run("snakemake --cores 1 data/prepared/fashion_mnist.pt", cwd)


# -- bad params.yaml edits ------------------------------------------------------------------------

def _set(path: str, value):
    def edit(params: dict):
        *parents, last = path.split(".")
        node = params
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return edit


def _all(*edits):
    def edit(params: dict):
        for one in edits:
            one(params)
    return edit


def _text(old: str, new: str):
    return ("text", old, new)


# (what is wrong, the edit, what the error must name). Each is refused before any job runs.
BAD_EDITS = [
    ("misspelt defense key", _set("defenses.ft.weight_decai", 0.1), "defenses.ft.weight_decai"),
    ("misspelt train key", _set("train.epoch", 3), "train.epoch: unknown key"),
    ("string for a number", _set("defenses.fip.eta_f", "abc"), "defenses.fip.eta_f"),
    ("quoted boolean", _set("defenses.fip.released", "false"), "defenses.fip.released: 'false' is a string"),
    ("target outside the classes", _set("attacks.badnets.target", 10), "attacks.badnets.target: 10 is not a class"),
    ("unknown top-level section", _set("trian.epochs", 2), "trian: unknown key"),
    ("float PyYAML reads as a string", _text("  weight_decay: 0.0005", "  weight_decay: 5e-4"),
     "train.weight_decay: '5e-4' is a string"),
    ("poison rate out of range", _set("attack_defaults.poison_rate", 1.5), "attack_defaults.poison_rate"),
    ("attack id not defined", _set("study.attacks", ["benign", "badnet"]), "study.attacks: 'badnet'"),
    ("unknown attack type", _set("attacks.badnets.type", "badnet"), "attacks.badnets.type: 'badnet'"),
    ("unknown dataset", _set("study.datasets", ["imagenet"]), "study.datasets[0]: 'imagenet'"),
    ("clean budget above the pool", _set("study.clean_budgets", [200]), "study.clean_budgets: 200"),
    ("pool leaves no attacker data", _set("splits.clean_pool", 700), "splits.clean_pool: 700"),
    ("epochs and iterations", _set("defenses.ft.epochs", 2), "defenses.ft.iterations: give either epochs"),
    ("choice misspelt", _set("defenses.fip.probe", "normal"), "defenses.fip.probe: 'normal' is not allowed"),
    ("zero batch size", _set("defenses.ft.batch_size", 0), "defenses.ft.batch_size: 0 is out of range"),
    ("fraction for an integer", _set("train.epochs", 1.5), "train.epochs: expected an integer"),
    ("null for a required value", _set("defenses.ft.lr", None), "defenses.ft.lr: null is not allowed"),
    ("clean-label all-to-all", _set("attacks.sig.all_to_all", True), "attacks.sig.all_to_all"),
    ("skip naming an undefined id", _set("study.skip", [{"attacks": ["wanett"]}]), "study.skip[0].attacks"),
    ("crafted surrogate", _all(_set("study.attacks", ["benign", "trojan"]), _set("surrogate.attack", "lc")),
     "surrogate.attack: 'lc' is itself crafted"),
    ("cross samples do not fit", _set("attacks.input_aware.poison_rate", 0.6), "attacks.input_aware.cross_ratio"),
    ("device misspelt", _set("device", "gpu"), "device: 'gpu' is not allowed: auto (cuda if present)"),
    ("precision misspelt", _set("precision", "bf32"), "precision: 'bf32' is not allowed"),
    ("patch larger than the image", _set("attacks.badnets.patch_size", 40), "attacks.badnets.patch_size: 40"),
    ("stratified budget below the classes", _all(_set("study.clean_budgets", [5]),
                                                  _set("defense_defaults.clean_sampling", "stratified")),
     "defense_defaults.clean_sampling: stratified sampling needs a clean budget of at least 10"),
    ("zero model width", _set("models.cnn.width", 0), "models.cnn.width: 0 is out of range"),
    ("YAML syntax error", _text("device: cpu", "device: [cpu"), "(YAML syntax)"),
    ("key given twice", _text("device: cpu", "device: cpu\ndevice: auto"), "device: given twice"),
    ("yes for a boolean", _text("  flip: true", "  flip: yes"), "train.flip: 'yes': write true or false"),
    ("section DVC tracks omitted", lambda params: params.pop("defense_defaults"),
     "defense_defaults: missing: DVC stages track"),
]


@pytest.fixture(scope="module")
def battery(base):
    return project(base, "battery")


@pytest.mark.parametrize("what,edit,named", BAD_EDITS, ids=[case[0] for case in BAD_EDITS])
def test_bad_params_edit_is_refused_before_any_job_naming_the_key(battery, what, edit, named):
    shipped = (battery / "params.yaml").read_text()
    try:
        if isinstance(edit, tuple):
            _, old, new = edit
            assert old in shipped, f"the case {what!r} no longer applies to params.yaml"
            text = shipped.replace(old, new, 1)
        else:
            params = yaml.safe_load(shipped)
            edit(params)
            text = yaml.safe_dump(params, sort_keys=False)
        (battery / "params.yaml").write_text(text)
        done = run("snakemake --cores 1 all", battery, ok=False)
    finally:
        (battery / "params.yaml").write_text(shipped)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and named in output, output[-3000:]
    if "missing" not in named:
        assert "line " in output  # the file's own lines can point at every other case
    for folder in ("data", "results", "logs"):
        assert not (battery / folder).exists(), f"{what}: a job ran"


# -- kill -9 of the runner itself ------------------------------------------------------------------

def test_a_live_runner_or_orphaned_job_is_named_and_a_stale_lock_cleared(tmp_path):
    sys.path.insert(0, str(ROOT / "workflow/scripts"))
    import guard

    (tmp_path / ".snakemake/locks").mkdir(parents=True)
    (tmp_path / ".snakemake/locks/0.input.lock").write_text("x")
    for argv0, says in [("snakemake", "another Snakemake run is working"),
                        (f"{tmp_path}/.snakemake/scripts/tmpx.purify.py", "a job of an earlier, killed Snakemake run")]:
        proc = subprocess.Popen(["bash", "-c", f"exec -a {argv0} sleep 30"], cwd=tmp_path)
        try:
            deadline = time.monotonic() + 10
            while not any(pid == proc.pid for group in guard.workspace_processes(tmp_path) for pid, _ in group):
                assert time.monotonic() < deadline, "the stand-in process was not seen"
                time.sleep(0.05)
            with pytest.raises(SystemExit, match=says):
                guard.clear_stale_lock(tmp_path)
            assert (tmp_path / ".snakemake/locks/0.input.lock").exists()  # nothing changed
        finally:
            proc.kill()
            proc.wait()
    guard.clear_stale_lock(tmp_path)  # nobody alive: the lock is stale
    assert not any((tmp_path / ".snakemake/locks").iterdir())


def test_kill_9_of_snakemake_itself_then_make_study_clears_the_lock_and_resumes(base, reference):
    """The runner dies (power loss, OOM killer, closed terminal) after a model is in place; its jobs
    end on their own. The README's command then clears the stale lock in one line and finishes."""
    sys.path.insert(0, str(ROOT / "workflow/scripts"))
    import guard

    cwd = project(base, "runner_killed")
    models = cwd / "results/models/fashion_mnist/cnn/badnets"
    models.mkdir(parents=True)
    watch = Inotify(models, renamed=True)
    proc = subprocess.Popen("snakemake --cores 1 all", shell=True, cwd=cwd, env=ENV, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        watch.wait_for("seed0.pt")
        runners, _ = guard.workspace_processes(cwd)
        assert runners, "no Snakemake runner found"
        for pid, _ in runners:
            os.kill(pid, signal.SIGKILL)
    finally:
        watch.close()
    proc.communicate(timeout=600)
    deadline = time.monotonic() + 600
    while any(guard.workspace_processes(cwd)):  # the orphaned job finishes on its own
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert any((cwd / ".snakemake/locks").iterdir())  # a plain rerun stops with a LockException

    again = run("workflow/scripts/run_all.sh", cwd)
    assert "cleared its stale lock" in again.stderr
    assert_same_results(cwd, reference)


# -- everyday accidents after a finished study: the README's command repairs them ------------------

RUN_FILES = "results/runs/fashion_mnist/cnn/badnets/ft/n50_seed0_d0"
ACCIDENTS = {  # what is done to a finished, recorded study -> the rules `run_all.sh` then runs
    "deleted run": (f"rm {RUN_FILES}.pt {RUN_FILES}.json {RUN_FILES}.time.json", {"purify", "aggregate", "report"}),
    "deleted model": ("rm results/models/fashion_mnist/cnn/badnets/seed0.pt",
                      {"train", "purify", "aggregate", "report"}),
    "dvc commit -f": ("dvc commit -f -q", set()),
    # DVC re-copies one upstream file (same bytes, now the newest): Snakemake alone would rerun 10 jobs
    "dvc checkout of one input": ("dvc checkout --relink -q data/prepared/fashion_mnist.pt", set()),
    "truncated metrics json": (f"truncate -s 20 {RUN_FILES}.json", {"purify", "aggregate", "report"}),
}


@pytest.fixture(scope="module")
def finished(base, reference):
    cwd = project(base, "accidents")
    run("workflow/scripts/run_all.sh", cwd)
    return cwd


def rules_run(output: str) -> set[str]:
    """The rules of Snakemake's 'Job stats' table in ``output`` (but `all`)."""
    if "Job stats:" not in output:
        return set()
    table = output.split("Job stats:")[1].split("\n\n")[0].splitlines()[3:]
    return {line.split()[0] for line in table if line.split() and line.split()[0] not in ("all", "total")}


@pytest.mark.parametrize("accident", list(ACCIDENTS))
def test_an_accident_is_repaired_by_the_readmes_command_with_the_same_results(finished, reference, accident):
    cwd = finished
    command, expected = ACCIDENTS[accident]
    before = {p: p.stat().st_mtime_ns for p in (cwd / "data").rglob("*") if p.is_file()}
    run(command, cwd)
    moved = [p for p, t in before.items() if p.exists() and p.stat().st_mtime_ns != t]
    # a plain Snakemake plans the same jobs (files are targets of all; bad json is forced; files DVC
    # re-copied get their recorded times back)
    plain = run("snakemake -n --cores 1 all", cwd)
    assert rules_run(plain.stdout + plain.stderr) == expected, plain.stdout[-3000:]
    if accident in ("dvc commit -f", "dvc checkout of one input"):
        assert moved and "re-copied with their recorded bytes" in plain.stdout + plain.stderr  # the case is really made
        assert all(p.stat().st_mtime_ns == before[p] for p in moved)
    again = run("workflow/scripts/run_all.sh", cwd)
    said = again.stdout + again.stderr
    assert rules_run(said) == expected, said[-3000:]
    if expected:
        assert "reconcile:" in again.stderr and "remaking them" in again.stderr
    assert "run_all: outputs recorded in dvc.lock" in again.stdout
    assert "Nothing to be done" in run("snakemake -n --cores 1 all", cwd).stdout
    assert "Data and pipelines are up to date" in run("dvc status", cwd).stdout
    assert_same_results(cwd, reference)
