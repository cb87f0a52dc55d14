rule download:
    output:
        directory("data/raw/{dataset}"),
    params:
        values=step_params("download"),
        code=code_params("download"),
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
        code=code_params("prepare"),
    conda:
        STUDY_ENV
    script:
        "../scripts/prepare.py"
