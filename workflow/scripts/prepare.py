"""Snakemake entry point: raw files → tensors with fixed attacker / pool / test splits."""
from backdoor import steps
from backdoor.joblog import logged

with logged(snakemake.log[0]):
    steps.use_threads(snakemake.threads)
    steps.prepare_dataset(snakemake.wildcards.dataset, snakemake.input[0], snakemake.output[0],
                          snakemake.params.values["splits"])
