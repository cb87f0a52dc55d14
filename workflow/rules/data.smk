rule download:
    output:
        directory("data/raw/{dataset}"),
    log:
        "logs/download/{dataset}.log",
    conda:
        STUDY_ENV
    params:
        values=step_params("download"),
        code=code_params("download"),
    script:
        "../scripts/download.py"


rule prepare:
    input:
        "data/raw/{dataset}",
    output:
        "data/prepared/{dataset}.pt",
    log:
        "logs/prepare/{dataset}.log",
    conda:
        STUDY_ENV
    threads: JOB_THREADS
    resources:
        **DATA_RESOURCES,
    params:
        values=step_params("prepare"),
        code=code_params("prepare"),
    script:
        "../scripts/prepare.py"
