rule craft:
    input:
        prepared="data/prepared/{dataset}.pt",
        surrogate=surrogate_model,
    output:
        "results/assets/{dataset}/{attack}.pt",
    params:
        values=step_params("craft"),
        code=code_params("craft"),
    threads: JOB_THREADS
    conda:
        STUDY_ENV
    script:
        "../scripts/craft.py"


rule poison:
    input:
        unpack(poison_inputs),
    output:
        "data/poisoned/{dataset}/{attack}.pt",
    params:
        values=step_params("poison"),
        code=code_params("poison"),
    conda:
        STUDY_ENV
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
    params:
        values=step_params("train"),
        code=code_params("train"),
    threads: JOB_THREADS
    conda:
        STUDY_ENV
    script:
        "../scripts/train.py"
