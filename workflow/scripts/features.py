"""Snakemake entry point: penultimate features of one model on a fixed test subsample (t-SNE)."""
from backdoor import steps
from backdoor.analysis import features
from backdoor.joblog import logged

with logged(snakemake.log[0]):
    steps.use_threads(snakemake.threads)
    tsne = snakemake.params.values["tsne"]
    out = features.extract(snakemake.input.model, snakemake.input.prepared, snakemake.input.poisoned,
                           snakemake.output[0], clean_images=tsne["clean_images"],
                           triggered_images=tsne["triggered_images"], seed=tsne["seed"],
                           device=snakemake.config.get("device", "auto"))  # machine-local
    print(f"features: {tuple(out['clean'].shape)} clean, {tuple(out['triggered'].shape)} triggered")
