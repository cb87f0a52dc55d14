"""Snakemake entry point: fetch a dataset's original files (mirror, OS package or URL; checksummed)."""
from backdoor import steps
from backdoor.joblog import logged

with logged(snakemake.log[0]):
    steps.download(snakemake.wildcards.dataset, snakemake.output[0], snakemake.config.get("data") or {})  # machine-local
