"""Snakemake entry point: fetch a dataset's original files (mirror, OS package or URL; checksummed)."""
from backdoor import steps

steps.download(snakemake.wildcards.dataset, snakemake.output[0], snakemake.config["data"])  # machine-local
