"""Snakemake entry point: every run's metrics json → results/metrics.csv."""
from backdoor import tables

tables.write_metrics_csv(snakemake.input.runs, snakemake.output[0], smoothness_paths=snakemake.input.smoothness)
