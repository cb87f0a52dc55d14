"""Snakemake entry point: optimise a crafted attack's trigger or images against the clean surrogate."""
from backdoor import steps
from backdoor.joblog import logged

with logged(snakemake.log[0]):
    steps.use_threads(snakemake.threads)
    steps.craft(snakemake.input.prepared, snakemake.input.surrogate, snakemake.output[0],
                snakemake.wildcards.attack, snakemake.params.values["attack"], snakemake.config.get("device", "auto"),
                snakemake.params.values["precision"])
