"""Snakemake entry point: one defense on one backdoored model, scored on the test sets."""
from backdoor import steps
from backdoor.joblog import logged

with logged(snakemake.log[0]):
    steps.use_threads(snakemake.threads)
    values, w = snakemake.params.values, snakemake.wildcards
    ids = {"dataset": w.dataset, "model": w.model, "attack": w.attack, "defense": w.defense}
    steps.purify(snakemake.input.prepared, snakemake.input.poisoned, snakemake.input.model,
                 snakemake.input.model_metrics, snakemake.output.model, snakemake.output.metrics,
                 ids=ids, defense_params=values["defense"], budget=int(w.budget), seed=int(w.seed),
                 defense_seed=int(w.dseed), device=snakemake.config.get("device", "auto"),
                 precision=values["precision"], arch=values["arch"])
