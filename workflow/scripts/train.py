"""Snakemake entry point: train one model on one (poisoned) training set."""
import torch

from backdoor import steps

torch.set_num_threads(snakemake.threads)
values = snakemake.params.values
steps.train(snakemake.input.prepared, snakemake.input.poisoned, snakemake.output.model,
            snakemake.output.metrics, values["model"], values["train"], int(snakemake.wildcards.seed),
            values["device"])
