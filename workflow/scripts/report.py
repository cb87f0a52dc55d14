"""Snakemake entry point: results/metrics.csv → tables, figures, headline metrics and plot data."""
from backdoor import report
from backdoor.joblog import logged

with logged(snakemake.log[0]):
    report.write(snakemake.input[0], dict(snakemake.output.items()), figures=snakemake.params.values["figures"],
                 benign=snakemake.params.benign, sweeps=snakemake.params.sweeps,
                 sweep_params=snakemake.params.sweep_params,
                 dynamics_csv=getattr(snakemake.input, "dynamics", None))
