"""Snakemake entry point: the re-tuning attack on one purified model (rule retune) or on the benign
model with one attack's poisoned images (retune_floor, the floor)."""
from backdoor import steps
from backdoor.joblog import logged

with logged(snakemake.log[0]):
    steps.use_threads(snakemake.threads)
    values, w = snakemake.params.values, snakemake.wildcards
    ids = {"dataset": w.dataset, "model": w.model, "attack": w.attack,
           "defense": w.defense if snakemake.rule == "retune" else "(benign floor)"}
    steps.retune(snakemake.input.prepared, snakemake.input.poisoned, snakemake.input.model,
                 snakemake.output.metrics, ids=ids, settings=values["retune"], budget=int(w.budget),
                 seed=int(w.seed), defense_seed=int(w.dseed), clean_sampling=values["clean_sampling"],
                 device=snakemake.config.get("device", "auto"), precision=values["precision"])
