"""Snakemake entry point: every run's metrics json (and smoothness json) → results/metrics.csv."""
from backdoor import tables
from backdoor.joblog import logged

with logged(snakemake.log[0]):
    tables.write_metrics_csv(snakemake.input.runs, snakemake.output[0], smoothness_paths=snakemake.input.smoothness)
