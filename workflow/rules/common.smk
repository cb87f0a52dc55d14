# Shared helpers: params validation, the study matrix, the params each step depends on.
import os
import sys
from pathlib import Path

# The library of this checkout, installed or not: for the Snakefile and, through PYTHONPATH, for
# the jobs' scripts (so a second clone never runs another clone's installed code).
LIBRARY = str(Path(workflow.basedir) / "src")
sys.path.insert(0, LIBRARY)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [LIBRARY, os.environ.get("PYTHONPATH")]))

from backdoor import params as P

try:
    P.validate(config, Path(workflow.basedir) / "workflow/schemas/params.schema.yaml")
except P.ParamsError as err:
    raise WorkflowError(str(err)) from None

STUDY = config["study"]
STUDY_ENV = "../../envs/study.yaml"  # for --sdm conda (relative to the rule files)
try:
    CORES = workflow.cores or 1
except WorkflowError:  # commands that run no job (--report, --lint) set no core count
    CORES = 1
# A training job uses up to 4 cores. With more --cores than the machine has CPUs, Snakemake would
# start several multi-threaded jobs on the same CPUs, which slows torch down about tenfold: then
# each training job claims every core, so they run one at a time.
JOB_THREADS = CORES if CORES > (os.cpu_count() or 1) else max(1, min(4, CORES))


wildcard_constraints:
    dataset="[a-z0-9_]+",
    model="[a-z0-9_]+",
    attack="[a-z0-9_]+",
    defense="[a-z0-9_]+",
    seed=r"\d+",
    dseed=r"\d+",
    budget=r"\d+",


def step_params(step):
    """The params.yaml values a job of `step` depends on: a rerun trigger for Snakemake, and the
    same keys are the `params:` of the generated DVC stages."""

    def values(wildcards):
        return P.step_values(config, step, **dict(wildcards.items()))

    return values


def surrogate_model(wildcards):
    """The clean model a crafted attack (trojan, lc, input_aware) is optimised against."""
    s = config["surrogate"]
    return f"results/models/{wildcards.dataset}/{s['model']}/{s['attack']}/seed{s['seed']}.pt"


def poison_inputs(wildcards):
    inputs = {"prepared": f"data/prepared/{wildcards.dataset}.pt"}
    if P.is_crafted(config, wildcards.attack):
        inputs["asset"] = f"results/assets/{wildcards.dataset}/{wildcards.attack}.pt"
    return inputs


RUN_JSONS = [
    "results/runs/{dataset}/{model}/{attack}/{defense}/n{budget}_seed{seed}_d{dseed}.json".format(**run)
    for run in P.study_runs(config)
]
