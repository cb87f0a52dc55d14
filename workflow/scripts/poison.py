"""Snakemake entry point: poison the attacker's training set and build the triggered test set."""
from backdoor import steps
from backdoor.joblog import logged

with logged(snakemake.log[0]):
    steps.use_threads(snakemake.threads)
    steps.poison(snakemake.input.prepared, snakemake.output[0], snakemake.wildcards.attack,
                 snakemake.params.values["attack"], snakemake.input.get("asset"))
