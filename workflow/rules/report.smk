rule aggregate:
    input:
        runs=RUN_JSONS,
        timings=RUN_TIMINGS,
        smoothness=SMOOTHNESS_JSONS,
        dynamics=DYNAMICS_JSONS,
        retune=RETUNE_JSONS,
        retune_floor=RETUNE_FLOOR_JSONS,
    output:
        **DYNAMICS_CSV,
        csv="results/metrics.csv",
        json="results/metrics.json",
    log:
        "logs/aggregate.log",
    conda:
        STUDY_ENV
    params:
        code=code_params("aggregate"),
    script:
        "../scripts/aggregate.py"


rule report:
    input:
        "results/metrics.csv",
        **DYNAMICS_CSV,
    output:
        **PLOT_DATA,
        **REPORT_FIGURES,
        **LASTING_TABLES,
        table="results/table.md",
        html=report(
            "results/table.html", caption="../report/tables.rst", category="Tables"
        ),
        tex=TABLES,
        headline="results/headline.json",
    log:
        "logs/report.log",
    conda:
        STUDY_ENV
    params:
        values=step_params("report"),
        benign=BENIGN,
        sweeps=SWEEPS,
        sweep_params={
            d: P.entry(config, "defenses", d).to_dict()
            for s in SWEEPS.values()
            for d in s["defenses"]
        },
        code=code_params("report"),
    script:
        "../scripts/report.py"


rule features:
    input:
        model="results/runs/{dataset}/{model}/{attack}/{defense}/n{budget}_seed{seed}_d{dseed}.pt",
        prepared="data/prepared/{dataset}.pt",
        poisoned="data/poisoned/{dataset}/{attack}.pt",
    output:
        "results/features/{dataset}/{model}/{attack}/{defense}/n{budget}_seed{seed}_d{dseed}.pt",
    log:
        "logs/features/{dataset}/{model}/{attack}/{defense}/n{budget}_seed{seed}_d{dseed}.log",
    conda:
        STUDY_ENV
    threads: JOB_THREADS
    resources:
        **TORCH_RESOURCES,
    params:
        values=step_params("features"),
        code=code_params("features"),
    script:
        "../scripts/features.py"


rule tsne:
    input:
        tsne_inputs,
    output:
        png=report(
            "results/figures/tsne/{dataset}/{model}/{attack}.png",
            caption="../report/tsne.rst",
            category="Feature space",
            labels={"attack": "{attack}", "model": "{model}"},
        ),
        vector=multiext(
            "results/figures/tsne/{dataset}/{model}/{attack}", ".svg", ".pdf"
        ),
    log:
        "logs/tsne/{dataset}/{model}/{attack}.log",
    conda:
        STUDY_ENV
    threads: 1
    params:
        values=step_params("tsne"),
        panels=lambda w: TSNE_DEFENSES[w.attack],
        code=code_params("tsne"),
    script:
        "../scripts/tsne.py"
