"""Snakemake entry point: train one model on one (poisoned) training set."""
from backdoor import steps
from backdoor.joblog import logged

with logged(snakemake.log[0]):
    steps.use_threads(snakemake.threads)
    values = snakemake.params.values
    steps.train(snakemake.input.prepared, snakemake.input.poisoned, snakemake.output.model,
                snakemake.output.metrics, values["model"], values["train"], int(snakemake.wildcards.seed),
                snakemake.config.get("device", "auto"), values["precision"])
