"""Snakemake entry point: λ_max and Tr(H) of one trained or purified model."""
from backdoor import steps
from backdoor.joblog import logged

with logged(snakemake.log[0]):
    steps.use_threads(snakemake.threads)
    steps.smoothness(snakemake.input.prepared, snakemake.input.model, snakemake.output.metrics,
                     snakemake.params.values["smoothness"], snakemake.config.get("device", "auto"))
