# What keeps Snakemake and DVC in step: each job's code dependencies (a rule param here, stage deps
# in the generated dvc.yaml) and one lock for the workspace, whichever runner holds it.
import fcntl

from backdoor import codedeps

ROOT = Path(workflow.basedir)


def job_code(rule, wildcards):
    """The script and library files a job of `rule` imports (backdoor.codedeps): its DVC stage's
    code deps; Snakemake sees them through the rule's `code` param."""
    r = workflow.get_rule(rule)
    script = Path(r.basedir.get_path_or_uri(secret_free=True)) / r.script
    values = P.step_values(config, rule, **dict(wildcards.items()))
    return codedeps.job_files(script, values, ROOT)


def code_params(rule):
    """`path -> md5` of the files `job_code` lists: editing any of them reruns the job (params
    trigger), the same files and hashes as the DVC stage's deps."""

    def fingerprint(wildcards):
        return codedeps.fingerprint(job_code(rule, wildcards), ROOT)

    return fingerprint


_DVC_LOCK = []


def hold_dvc_lock(hold=True):
    """Hold DVC's workspace lock while Snakemake runs jobs, so that a `dvc repro` (or `dvc exp run`)
    started meanwhile stops with a lock error before deleting any output; and stop here, before any
    job, when a DVC command holds it. Jobs that DVC itself runs (DVC_STAGE is set) skip this.
    `hold=False` only checks (and releases at once)."""
    if os.environ.get("DVC_STAGE") or not (ROOT / ".dvc").is_dir() or _DVC_LOCK:
        return
    path = ROOT / ".dvc" / "tmp" / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise WorkflowError(
            "another process holds this workspace's DVC lock (.dvc/tmp/lock): a `dvc repro`, "
            "`dvc exp run` or other DVC command is running here. Nothing was changed; run Snakemake "
            "when it has finished."
        ) from None
    if hold:
        _DVC_LOCK.append(handle)  # released when Snakemake exits
    else:
        handle.close()


# Checked while the Snakefile is read, before Snakemake takes its own locks: a `dvc repro` running
# here runs Snakemake jobs whose lock files come and go, and a second Snakemake would otherwise
# fail on them with an obscure error instead of this one. Job processes (remote, subprocess) skip it.
if workflow.is_main_process:
    hold_dvc_lock(hold=False)


onstart:
    hold_dvc_lock()
