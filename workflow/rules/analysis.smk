rule smoothness:
    input:
        prepared="data/prepared/{dataset}.pt",
        model="results/runs/{dataset}/{model}/{attack}/{defense}/n{budget}_seed{seed}_d{dseed}.pt",
    output:
        metrics="results/smoothness/{dataset}/{model}/{attack}/{defense}/n{budget}_seed{seed}_d{dseed}.json",
        timing="results/smoothness/{dataset}/{model}/{attack}/{defense}/n{budget}_seed{seed}_d{dseed}.time.json",
    log:
        "logs/smoothness/{dataset}/{model}/{attack}/{defense}/n{budget}_seed{seed}_d{dseed}.log",
    conda:
        STUDY_ENV
    threads: JOB_THREADS
    resources:
        **TORCH_RESOURCES,
    params:
        values=step_params("smoothness"),
        code=code_params("smoothness"),
    script:
        "../scripts/smoothness.py"


rule retune:
    input:
        prepared="data/prepared/{dataset}.pt",
        poisoned="data/poisoned/{dataset}/{attack}.pt",
        model="results/runs/{dataset}/{model}/{attack}/{defense}/n{budget}_seed{seed}_d{dseed}.pt",
    output:
        metrics="results/retune/runs/{dataset}/{model}/{attack}/{defense}/n{budget}_seed{seed}_d{dseed}.json",
        timing="results/retune/runs/{dataset}/{model}/{attack}/{defense}/n{budget}_seed{seed}_d{dseed}.time.json",
    log:
        "logs/retune/runs/{dataset}/{model}/{attack}/{defense}/n{budget}_seed{seed}_d{dseed}.log",
    conda:
        STUDY_ENV
    threads: JOB_THREADS
    resources:
        **torch_resources("purify"),
    params:
        values=step_params("retune"),
        code=code_params("retune"),
    script:
        "../scripts/retune.py"


rule retune_floor:
    input:
        prepared="data/prepared/{dataset}.pt",
        poisoned="data/poisoned/{dataset}/{attack}.pt",
        model=lambda w: f"results/models/{w.dataset}/{w.model}/{BENIGN_ID[0]}/seed{w.seed}.pt",
    output:
        metrics="results/retune/floor/{dataset}/{model}/{attack}/n{budget}_seed{seed}_d{dseed}.json",
        timing="results/retune/floor/{dataset}/{model}/{attack}/n{budget}_seed{seed}_d{dseed}.time.json",
    log:
        "logs/retune/floor/{dataset}/{model}/{attack}/n{budget}_seed{seed}_d{dseed}.log",
    conda:
        STUDY_ENV
    threads: JOB_THREADS
    resources:
        **torch_resources("purify"),
    params:
        values=step_params("retune_floor"),
        code=code_params("retune_floor"),
    script:
        "../scripts/retune.py"
