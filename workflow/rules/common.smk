# Shared helpers: params.yaml checked and resolved, the study matrix, the params each step depends on.
import os
from pathlib import Path

from snakemake.logging import logger

try:
    PARAMS = P.validate(config, "params.yaml")  # every problem at once, with its line
except P.ParamsError as err:
    raise WorkflowError(str(err)) from None
for notice in P.notices(PARAMS):
    logger.warning(notice)

STUDY_ENV = "../../envs/study.yaml"  # for --sdm conda (relative to the rule files)
CORES = workflow.cores or 1
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
    s = PARAMS.surrogate
    return f"results/models/{wildcards.dataset}/{s.model}/{s.attack}/seed{s.seed}.pt"


def poison_inputs(wildcards):
    inputs = {"prepared": f"data/prepared/{wildcards.dataset}.pt"}
    if PARAMS.attacks[wildcards.attack].crafted:
        inputs["asset"] = f"results/assets/{wildcards.dataset}/{wildcards.attack}.pt"
    return inputs


RUN_JSONS = [
    "results/runs/{dataset}/{model}/{attack}/{defense}/n{budget}_seed{seed}_d{dseed}.json".format(
        **run
    )
    for run in PARAMS.study.runs()
]
FIGURES = expand(
    "results/figures/{name}.{ext}", name=["acc_asr", "runtime"], ext=["png", "svg"]
)
REPORT_OUTPUTS = ["results/metrics.csv", "results/table.md", *FIGURES]
