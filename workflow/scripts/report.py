"""Snakemake entry point: results/metrics.csv → Markdown table and figures."""
from backdoor import plots, tables
from backdoor.joblog import logged

with logged(snakemake.log[0]):
    tables.write_markdown_table(snakemake.input[0], snakemake.output.table)
    plots.write_figures(snakemake.input[0], snakemake.output.figures)
