"""The cluster profile, run for real: a one-node SLURM cluster on 127.0.0.1 (Debian's slurm-wlm,
slurmctld + slurmd, no accounting, no munge) runs the tiny study through the pinned executor plugin
and profiles/slurm, and every output must equal a local run's byte for byte (timings aside).

Opt-in (it installs Debian packages and starts daemons): `pytest -m slurm tests/test_slurm.py`, or
`make test-slurm`. Needs root (apt-get, slurmd) and the Debian package dataset-fashion-mnist.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from test_e2e import FMNIST, TIMING_DERIVED, files, tiny

pytestmark = pytest.mark.slurm
ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["slurmctld", "slurmd", "slurm-client"]
TORCH_RULES = ["prepare", "poison", "craft", "train", "purify", "smoothness", "features"]


def run(cmd: list[str] | str, cwd: Path, env: dict, timeout: int = 1800) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          shell=isinstance(cmd, str))
    if proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc.stdout + proc.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def install_prerequisites() -> None:
    if os.geteuid() != 0:
        pytest.skip("the SLURM test starts slurmd, which needs root")
    if not shutil.which("slurmctld") or not shutil.which("sbatch"):
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *PACKAGES], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", str(ROOT / "envs/slurm.txt")], check=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """slurmctld and slurmd on 127.0.0.1 with a private config; yields the environment to submit from."""
    if not FMNIST.exists():
        pytest.skip("the Debian package dataset-fashion-mnist is not installed (make setup installs it)")
    install_prerequisites()
    base = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "run", "log", "bin"):
        (base / sub).mkdir()
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    conf = base / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=backdoor-test", "SlurmctldHost=localhost",
        f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}",
        "AuthType=auth/none", "CredType=cred/none", "MpiDefault=none",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
        "AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none",
        "JobCompType=jobcomp/none", "SlurmUser=root", "SlurmdUser=root", "ReturnToService=2",
        "MinJobAge=300",  # the plugin accepts squeue as its status command from 120 s on
        f"StateSaveLocation={base / 'state'}", f"SlurmdSpoolDir={base / 'spool'}",
        f"SlurmctldPidFile={base / 'run/slurmctld.pid'}", f"SlurmdPidFile={base / 'run/slurmd.pid'}",
        f"SlurmctldLogFile={base / 'log/slurmctld.log'}", f"SlurmdLogFile={base / 'log/slurmd.log'}",
        f"NodeName=localhost CPUs={os.cpu_count()} RealMemory={memory_mb - 1024} State=UNKNOWN",
        "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP", ""]))
    # The jobstep plugin drops every SLURM_* variable before its inner srun, SLURM_CONF included
    # (workflow-notes §4); a cluster with /etc/slurm/slurm.conf needs no such shim.
    shim = base / "bin" / "srun"
    shim.write_text(f"#!/bin/sh\nSLURM_CONF={conf} exec {shutil.which('srun')} \"$@\"\n")
    shim.chmod(0o755)
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": f"{base / 'bin'}:{Path(sys.executable).parent}:"
           f"{os.environ['PATH']}", "OMP_NUM_THREADS": "1", "CORES": "2"}
    daemons = [subprocess.Popen(["slurmctld", "-D", "-i"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT),
               subprocess.Popen(["slurmd", "-D", "-N", "localhost"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT)]
    try:
        deadline = time.time() + 60
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True,
                                           text=True).stdout:
            if time.time() > deadline or any(d.poll() is not None for d in daemons):
                logs = "".join((base / "log" / n).read_text() for n in ("slurmctld.log", "slurmd.log")
                               if (base / "log" / n).exists())
                pytest.fail(f"the one-node cluster did not come up:\n{logs[-4000:]}")
            time.sleep(1)
        assert run(["sbatch", "--parsable", "--wait", "--wrap", "true"], base, env).strip().isdigit()
        yield env
    finally:
        for daemon in daemons:
            daemon.terminate()
        for daemon in daemons:
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()


def tiny_project(dest: Path) -> Path:
    from conftest import project_files

    for rel in project_files():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    params = tiny(yaml.safe_load((dest / "params.yaml").read_text()))
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dest


def test_the_tiny_study_on_slurm_equals_a_local_run(cluster, tmp_path):
    local, remote = tiny_project(tmp_path / "local"), tiny_project(tmp_path / "slurm")
    start = time.perf_counter()
    run(["snakemake", "--cores", "2", "all"], local, cluster)
    local_s = time.perf_counter() - start
    one_thread = [f"{rule}=1" for rule in TORCH_RULES]  # as the local run: numbers depend on threads
    start = time.perf_counter()
    log = run(["snakemake", "--profile", "profiles/slurm", "--jobs", "2", "--latency-wait", "5",
               "--default-resources", "slurm_partition=debug", "--slurm-no-account",
               "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "5",
               "--set-threads", *one_thread, "--", "all"],
              remote, cluster)
    slurm_s = time.perf_counter() - start
    print(f"local run {local_s:.0f} s, SLURM run {slurm_s:.0f} s")
    # the torch rules went through sbatch, the light ones ran on this host (localrules)
    submitted = set(re.findall(r"submitted with SLURM jobid \d+ \(log: \S*/slurm_logs/rule_(\w+?)/", log))
    assert submitted == {"prepare", "poison", "craft", "train", "purify", "smoothness", "features"}, log[-3000:]
    assert {"download", "aggregate", "report", "tsne", "all"} <= set(re.findall(r"localrule (\w+):", log))
    outputs = files(local)
    assert outputs == files(remote)
    differ = [f for f in sorted(outputs) if not TIMING_DERIVED.search(f)
              and (local / f).read_bytes() != (remote / f).read_bytes()]
    assert not differ, differ
