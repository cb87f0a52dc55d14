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
