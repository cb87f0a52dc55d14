"""Snakemake entry point: every run's metrics json → results/metrics.csv."""
from backdoor import tables
from backdoor.joblog import logged

with logged(snakemake.log[0]):
    tables.write_metrics_csv(snakemake.input, snakemake.output[0])
