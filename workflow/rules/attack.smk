rule craft:
    input:
        prepared="data/prepared/{dataset}.pt",
        surrogate=surrogate_model,
    output:
        "results/assets/{dataset}/{attack}.pt",
    log:
        "logs/craft/{dataset}/{attack}.log",
    conda:
        STUDY_ENV
    threads: JOB_THREADS
    resources:
        **TORCH_RESOURCES,
    params:
        values=step_params("craft"),
        code=code_params("craft"),
    script:
        "../scripts/craft.py"


rule poison:
    input:
        unpack(poison_inputs),
    output:
        "data/poisoned/{dataset}/{attack}.pt",
    log:
        "logs/poison/{dataset}/{attack}.log",
    conda:
        STUDY_ENV
    threads: JOB_THREADS
    resources:
        **DATA_RESOURCES,
    params:
        values=step_params("poison"),
        code=code_params("poison"),
    script:
        "../scripts/poison.py"


rule train:
    input:
        prepared="data/prepared/{dataset}.pt",
        poisoned="data/poisoned/{dataset}/{attack}.pt",
    output:
        model="results/models/{dataset}/{model}/{attack}/seed{seed}.pt",
        metrics="results/models/{dataset}/{model}/{attack}/seed{seed}.json",
        timing="results/models/{dataset}/{model}/{attack}/seed{seed}.time.json",
    log:
        "logs/train/{dataset}/{model}/{attack}/seed{seed}.log",
    conda:
        STUDY_ENV
    threads: JOB_THREADS
    resources:
        **torch_resources("train"),
    params:
        values=step_params("train"),
        code=code_params("train"),
    script:
        "../scripts/train.py"
