# Shared helpers: params validation, the study matrix, the params each step depends on.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))  # the library, installed or not

from backdoor import params as P

try:
    P.validate(config, Path(workflow.basedir) / "workflow/schemas/params.schema.yaml")
except P.ParamsError as err:
    raise WorkflowError(str(err)) from None

STUDY = config["study"]
SCRIPTS = Path(workflow.basedir) / "workflow/scripts"
JOB_THREADS = max(1, min(4, workflow.cores or 1))  # one job uses up to 4 cores


wildcard_constraints:
    dataset="[a-z0-9_]+",
    model="[a-z0-9_]+",
    attack="[a-z0-9_]+",
    defense="[a-z0-9_]+",
    seed=r"\d+",
    budget=r"\d+",


def step_params(step):
    """The params.yaml values a job of `step` depends on: a rerun trigger for Snakemake, and the
    same keys are the `params:` of the generated DVC stages."""

    def values(wildcards):
        return P.step_values(config, step, **dict(wildcards.items()))

    return values


RUN_JSONS = expand(
    "results/runs/{dataset}/{model}/{attack}/{defense}/n{budget}_seed{seed}.json",
    dataset=STUDY["datasets"],
    model=STUDY["models"],
    attack=STUDY["attacks"],
    defense=STUDY["defenses"],
    budget=STUDY["clean_budgets"],
    seed=STUDY["seeds"],
)
FIGURES = expand("results/figures/{name}.{ext}", name=["acc_asr", "runtime"], ext=["png", "svg"])
REPORT_OUTPUTS = ["results/metrics.csv", "results/table.md", *FIGURES]
