rule smoothness:
    input:
        prepared="data/prepared/{dataset}.pt",
        model="results/runs/{dataset}/{model}/{attack}/{defense}/n{budget}_seed{seed}_d{dseed}.pt",
    output:
        "results/smoothness/{dataset}/{model}/{attack}/{defense}/n{budget}_seed{seed}_d{dseed}.json",
    params:
        values=step_params("smoothness"),
    threads: JOB_THREADS
    conda:
        STUDY_ENV
    script:
        "../scripts/smoothness.py"
