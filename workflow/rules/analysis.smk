rule smoothness:
    input:
        prepared="data/prepared/{dataset}.pt",
        model="results/runs/{dataset}/{model}/{attack}/{defense}/n{budget}_seed{seed}_d{dseed}.pt",
    output:
        "results/smoothness/{dataset}/{model}/{attack}/{defense}/n{budget}_seed{seed}_d{dseed}.json",
    log:
        "logs/smoothness/{dataset}/{model}/{attack}/{defense}/n{budget}_seed{seed}_d{dseed}.log",
    conda:
        STUDY_ENV
    threads: JOB_THREADS
    params:
        values=step_params("smoothness"),
    script:
        "../scripts/smoothness.py"
