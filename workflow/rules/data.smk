rule download:
    output:
        directory("data/raw/{dataset}"),
    params:
        values=step_params("download"),
    conda:
        STUDY_ENV
    script:
        "../scripts/download.py"


rule prepare:
    input:
        "data/raw/{dataset}",
    output:
        "data/prepared/{dataset}.pt",
    params:
        values=step_params("prepare"),
    threads: JOB_THREADS
    conda:
        STUDY_ENV
    script:
        "../scripts/prepare.py"
