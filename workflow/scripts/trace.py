"""Snakemake entry point: a training (rule trace_train) or a purification (trace_purify) run again,
keeping checkpoints along the way; it reads no test data."""
from backdoor import steps
from backdoor.joblog import logged

with logged(snakemake.log[0]):
    steps.use_threads(snakemake.threads)
    values, w, device = snakemake.params.values, snakemake.wildcards, snakemake.config.get("device", "auto")
    if snakemake.rule == "trace_train":
        steps.trace_train(snakemake.input.prepared, snakemake.input.poisoned, snakemake.output[0], values["model"],
                          values["train"], int(w.seed), int(values["every"]), device, values["precision"],
                          ids={"dataset": w.dataset, "model": w.model})
    else:
        steps.trace_purify(snakemake.input.prepared, snakemake.input.model, snakemake.output[0],
                           ids={"dataset": w.dataset, "model": w.model, "attack": w.attack, "defense": w.defense},
                           defense_params=values["defense"], budget=int(w.budget), seed=int(w.seed),
                           defense_seed=int(w.dseed), every=int(values["every"]), device=device,
                           precision=values["precision"], arch=values["arch"])
