# The study's DAG. Everything comes from params.yaml (checked before any job runs).
#   snakemake --cores 8 all      (dvc repro runs the same jobs: dvc.yaml is generated from this DAG)
# Job output goes to logs/<rule>/<wildcards>.log; profiles/default/config.yaml sets the defaults.
import os
import sys

from snakemake.utils import min_version, validate

min_version("9.0")

# The library of this checkout, installed or not: for the Snakefile and, through PYTHONPATH, for the
# jobs' scripts (so a second clone never runs another clone's installed code).
LIBRARY = os.path.join(workflow.basedir, "src")
sys.path.insert(0, LIBRARY)
os.environ.update(
    PYTHONPATH=os.pathsep.join(filter(None, [LIBRARY, os.environ.get("PYTHONPATH")]))
)

from backdoor import params as P

# A YAML error with its line number (configfile: would not say where).
try:
    P.check_syntax("params.yaml")
except P.ParamsError as err:
    raise WorkflowError(str(err)) from None


configfile: "params.yaml"


# Snakemake's own check against the JSON Schema generated from src/backdoor/schema/ (`make schema`;
# editors read it through params.yaml's first line). When it fails, the study's checks speak
# instead, naming every problem with its line; if they find none, the schema is stale.
try:
    validate(config, "workflow/schemas/params.schema.json", set_default=False)
except WorkflowError as err:
    try:
        P.validate(config, "params.yaml")
    except P.ParamsError as problems:
        raise WorkflowError(str(problems)) from None
    raise WorkflowError(
        "workflow/schemas/params.schema.json refuses what src/backdoor/schema/ accepts: "
        "run `make schema` to regenerate it",
        err,
    ) from None


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/runners.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/attack.smk"
include: "workflow/rules/defense.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/dynamics.smk"
include: "workflow/rules/report.smk"


# On a cluster (profiles/slurm) these run on the submitting host: downloads need its network, and
# the tables, figures and report are seconds of work on small files.
localrules:
    all,
    download,
    aggregate,
    report,
    tsne,


rule all:
    default_target: True
    input:
        REPORT_OUTPUTS,
        KEPT_OUTPUTS,
