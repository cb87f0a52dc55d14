"""Snakemake entry point: results/metrics.csv → tables, figures, headline metrics and plot data."""
import contextlib

from backdoor import report

with open(snakemake.log[0], "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
    report.write(snakemake.input[0], dict(snakemake.output.items()), figures=snakemake.params.values["figures"],
                 benign=snakemake.params.benign, sweeps=snakemake.params.sweeps,
                 sweep_params=snakemake.params.sweep_params)
