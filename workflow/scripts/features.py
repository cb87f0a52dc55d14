"""Snakemake entry point: penultimate features of one model on a fixed test subsample (t-SNE)."""
import contextlib

from backdoor import steps
from backdoor.analysis import features

steps.use_threads(snakemake.threads)

values = snakemake.params.values
with open(snakemake.log[0], "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
    tsne = values["tsne"]
    out = features.extract(snakemake.input.model, snakemake.input.prepared, snakemake.input.poisoned,
                           snakemake.output[0], clean_images=tsne["clean_images"],
                           triggered_images=tsne["triggered_images"], seed=tsne["seed"], device=values["device"])
    print(f"features: {tuple(out['clean'].shape)} clean, {tuple(out['triggered'].shape)} triggered")
