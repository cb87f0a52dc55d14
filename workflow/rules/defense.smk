rule purify:
    input:
        prepared="data/prepared/{dataset}.pt",
        poisoned="data/poisoned/{dataset}/{attack}.pt",
        model="results/models/{dataset}/{model}/{attack}/seed{seed}.pt",
        model_metrics="results/models/{dataset}/{model}/{attack}/seed{seed}.json",
    output:
        model="results/runs/{dataset}/{model}/{attack}/{defense}/n{budget}_seed{seed}_d{dseed}.pt",
        metrics="results/runs/{dataset}/{model}/{attack}/{defense}/n{budget}_seed{seed}_d{dseed}.json",
        timing="results/runs/{dataset}/{model}/{attack}/{defense}/n{budget}_seed{seed}_d{dseed}.time.json",
    log:
        "logs/purify/{dataset}/{model}/{attack}/{defense}/n{budget}_seed{seed}_d{dseed}.log",
    conda:
        STUDY_ENV
    threads: JOB_THREADS
    resources:
        **torch_resources("purify"),
    params:
        values=step_params("purify"),
        code=code_params("purify"),
    script:
        "../scripts/purify.py"
