rule aggregate:
    input:
        runs=RUN_JSONS,
        timings=RUN_TIMINGS,
        smoothness=SMOOTHNESS_JSONS,
    output:
        csv="results/metrics.csv",
        json="results/metrics.json",
    log:
        "logs/aggregate.log",
    conda:
        STUDY_ENV
    params:
        code=code_params("aggregate"),
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
    params:
        code=code_params("report"),
    script:
        "../scripts/report.py"
