"""Snakemake entry point: every run's metrics json → results/metrics.csv and the headline metrics.json."""
from backdoor import tables

frame = tables.write_metrics_csv(snakemake.input.runs, snakemake.output.csv)
tables.write_metrics_json(frame, snakemake.output.json)
