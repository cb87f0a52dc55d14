"""Snakemake entry point: every run's metrics json (and smoothness json) → results/metrics.csv and the
headline metrics.json (and the dynamics' checkpoints → results/dynamics.csv)."""
from backdoor import tables
from backdoor.joblog import logged

with logged(snakemake.log[0]):
    frame = tables.write_metrics_csv(snakemake.input.runs, snakemake.output.csv,
                                     smoothness_paths=snakemake.input.smoothness,
                                     retune_paths=snakemake.input.retune,
                                     floor_paths=snakemake.input.retune_floor)
    tables.write_metrics_json(frame, snakemake.output.json)
    if hasattr(snakemake.output, "dynamics"):  # figures.dynamics selects traces
        tables.write_dynamics_csv(snakemake.input.dynamics, snakemake.output.dynamics)
