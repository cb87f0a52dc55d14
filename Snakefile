# The study's DAG. Everything comes from params.yaml (validated before any job runs).
#   snakemake --cores 8 all      (dvc repro runs the same jobs: dvc.yaml is generated from this DAG)
from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/runners.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/attack.smk"
include: "workflow/rules/defense.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        REPORT_OUTPUTS,
