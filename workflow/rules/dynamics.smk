# Dynamics (figures.dynamics): the training and the purification of the selected runs again, keeping
# checkpoints, and every checkpoint scored in a later job; results/dynamics.csv feeds the figures.
DYN = FIGS["dynamics"]
DYN_FIRST = {k: FIRST[k] for k in ("dataset", "model", "budget", "dseed")}
DYN_TRAIN = (
    [
        "{dataset}/{model}/{attack}/seed{seed}".format(**DYN_FIRST, attack=a, seed=s)
        for a in [*BENIGN_ID, *DYN["attacks"]]
        for s in DYN["seeds"]
    ]
    if DYN["attacks"]
    else []
)
DYN_PURIFY = [
    "{dataset}/{model}/{attack}/{defense}/n{budget}_seed{seed}_d{dseed}".format(
        **DYN_FIRST, attack=a, defense=d, seed=s
    )
    for a in DYN["attacks"]
    for d in DYN["defenses"]
    for s in DYN["seeds"]
]
# results/dynamics.csv (aggregate) and the two figures (report) exist only with a selection.
DYNAMICS_CSV = {"dynamics": "results/dynamics.csv"} if DYN_TRAIN or DYN_PURIFY else {}
DYNAMICS_JSONS = [f"results/dynamics/train/{r}.json" for r in DYN_TRAIN] + [
    f"results/dynamics/purify/{r}.json" for r in DYN_PURIFY
]
if DYN_TRAIN:
    REPORT_FIGURES.update(_figure("dynamics_training", "dynamics_training", "Dynamics"))
    PLOT_DATA["data_dynamics_training"] = "results/plots/dynamics_training.csv"
if DYN_PURIFY:
    REPORT_FIGURES.update(
        _figure("dynamics_purification", "dynamics_purification", "Dynamics")
    )
    PLOT_DATA["data_dynamics_purification"] = "results/plots/dynamics_purification.csv"
REPORT_OUTPUTS.extend(
    [
        *(DYNAMICS_CSV.values()),
        *[
            p
            for k, v in REPORT_FIGURES.items()
            if k.startswith("dynamics_")
            for p in ([v] if isinstance(v, str) else v)
        ],
        *[v for k, v in PLOT_DATA.items() if k.startswith("data_dynamics_")],
    ]
)


rule trace_train:
    input:
        prepared="data/prepared/{dataset}.pt",
        poisoned="data/poisoned/{dataset}/{attack}.pt",
    output:
        "results/dynamics/train/{dataset}/{model}/{attack}/seed{seed}.pt",
    log:
        "logs/dynamics/train/{dataset}/{model}/{attack}/seed{seed}.log",
    conda:
        STUDY_ENV
    threads: JOB_THREADS
    resources:
        **torch_resources("train"),
    params:
        values=step_params("trace_train"),
        code=code_params("trace_train"),
    script:
        "../scripts/trace.py"


rule trace_purify:
    input:
        prepared="data/prepared/{dataset}.pt",
        model="results/models/{dataset}/{model}/{attack}/seed{seed}.pt",
    output:
        "results/dynamics/purify/{dataset}/{model}/{attack}/{defense}/n{budget}_seed{seed}_d{dseed}.pt",
    log:
        "logs/dynamics/purify/{dataset}/{model}/{attack}/{defense}/n{budget}_seed{seed}_d{dseed}.log",
    conda:
        STUDY_ENV
    threads: JOB_THREADS
    resources:
        **torch_resources("purify"),
    params:
        values=step_params("trace_purify"),
        code=code_params("trace_purify"),
    script:
        "../scripts/trace.py"


rule measure_trace:
    input:
        prepared="data/prepared/{dataset}.pt",
        poisoned="data/poisoned/{dataset}/{attack}.pt",
        trace="results/dynamics/{kind}/{dataset}/{model}/{attack}/{run}.pt",
    output:
        metrics="results/dynamics/{kind}/{dataset}/{model}/{attack}/{run}.json",
        timing="results/dynamics/{kind}/{dataset}/{model}/{attack}/{run}.time.json",
    log:
        "logs/dynamics/{kind}/{dataset}/{model}/{attack}/{run}.measure.log",
    wildcard_constraints:
        kind="train|purify",
        run=r"[a-z0-9_]+(/[a-z0-9_]+)?",
    conda:
        STUDY_ENV
    threads: JOB_THREADS
    resources:
        **TORCH_RESOURCES,
    params:
        values=step_params("measure_trace"),
        code=code_params("measure_trace"),
    script:
        "../scripts/measure_trace.py"
