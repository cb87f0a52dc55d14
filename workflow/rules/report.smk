rule aggregate:
    input:
        runs=RUN_JSONS,
        smoothness=SMOOTHNESS_JSONS,
    output:
        "results/metrics.csv",
    log:
        "logs/aggregate.log",
    conda:
        STUDY_ENV
    script:
        "../scripts/aggregate.py"


rule report:
    input:
        "results/metrics.csv",
    output:
        table="results/table.md",
        figures=report(FIGURES, caption="../report/figures.rst", category="Results"),
    log:
        "logs/report.log",
    conda:
        STUDY_ENV
    script:
        "../scripts/report.py"
