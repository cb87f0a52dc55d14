"""Snakemake entry point: t-SNE of the stored features, before and after each seed method."""
from threadpoolctl import threadpool_limits

from backdoor import plots
from backdoor.analysis import features
from backdoor.io import load_tensors
from backdoor.joblog import logged

w, tsne = snakemake.wildcards, snakemake.params.values["tsne"]
with logged(snakemake.log[0]), threadpool_limits(snakemake.threads):
    panels = {("before (no defense)" if d == "none" else d): features.embed(load_tensors(path), tsne["seed"],
                                                                           tsne["perplexity"])
              for d, path in zip(snakemake.params.panels, snakemake.input)}
    title = f"t-SNE of penultimate features: {w.attack} on {w.dataset} · {w.model}"
    plots.save(plots.tsne_figure(panels, title), [snakemake.output.png, *snakemake.output.vector])
