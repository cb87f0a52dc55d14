rule aggregate:
    input:
        RUN_JSONS,
    output:
        "results/metrics.csv",
    script:
        "../scripts/aggregate.py"


rule report:
    input:
        "results/metrics.csv",
    output:
        table="results/table.md",
        figures=report(FIGURES, caption="../report/figures.rst", category="Results"),
    script:
        "../scripts/report.py"
