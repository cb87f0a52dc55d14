rule aggregate:
    input:
        runs=RUN_JSONS,
        timings=RUN_TIMINGS,
    output:
        csv="results/metrics.csv",
        json="results/metrics.json",
    params:
        code=code_params("aggregate"),
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
    params:
        code=code_params("report"),
    conda:
        STUDY_ENV
    script:
        "../scripts/report.py"
