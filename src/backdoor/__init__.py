"""A reproducible study of backdoor purification.

The library behind the Snakemake/DVC study: datasets, attacks, models, the one training loop,
defenses and metrics. Nothing in here knows about Snakemake or DVC.
"""

__version__ = "0.1.0"
