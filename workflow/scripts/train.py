"""Snakemake entry point: train one model on one (poisoned) training set."""
from backdoor import steps

steps.use_threads(snakemake.threads)
values = snakemake.params.values
steps.train(snakemake.input.prepared, snakemake.input.poisoned, snakemake.output.model,
            snakemake.output.metrics, values["model"], values["train"], int(snakemake.wildcards.seed),
            snakemake.config["device"], values["precision"])
