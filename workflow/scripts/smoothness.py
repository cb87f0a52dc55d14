"""Snakemake entry point: λ_max and Tr(H) of one trained or purified model."""
from backdoor import steps
from backdoor.joblog import logged

with logged(snakemake.log[0]):
    steps.use_threads(snakemake.threads)
    values = snakemake.params.values
    steps.smoothness(snakemake.input.prepared, snakemake.input.model, snakemake.output[0], values["smoothness"],
                     values["device"])
