# metrics.csv, then tables, figures, DVC's headline metrics and plot data, and the t-SNE figures;
# every figure and table is in `snakemake --report report.html`, captioned from params.yaml.
import subprocess

from backdoor.tables import rate_sweep

STUDY = PARAMS.study.to_dict()
FIGS = PARAMS.figures.to_dict()
BENIGN = [a for a in STUDY["attacks"] if PARAMS.attacks[a].kind == "benign"]
STUDY_RUNS = PARAMS.study.runs()


def _in_study(ids, axis):
    return [i for i in ids if i in STUDY[axis]]


def _commit():
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=workflow.basedir,
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return out or "unknown (not a git checkout)"


# Read by the report's captions only (no job's params): the checkout the report was built from.
config["_commit"] = _commit()

# One main table per (dataset, model, clean budget) that has runs.
GROUPS = list(
    dict.fromkeys((r["dataset"], r["model"], r["budget"]) for r in STUDY_RUNS)
)
TABLES = [f"results/tables/{d}-{m}-n{b}.tex" for d, m, b in GROUPS]

# Sample efficiency: curves need two budgets; the DVC plot data exist whenever the ids do.
SE_ATTACKS = _in_study(FIGS["sample_efficiency"]["attacks"], "attacks")
SE_DEFENSES = _in_study(FIGS["sample_efficiency"]["defenses"], "defenses")
SE_COLUMNS = [f"{a}_{d}" for a in SE_ATTACKS for d in SE_DEFENSES]
# Trade-off: a method's curve needs two of its swept defense ids in the study.
SWEEPS = {
    m: {"knob": s["knob"], "defenses": _in_study(s["defenses"], "defenses")}
    for m, s in FIGS["tradeoff"].items()
}
SWEEPS = {m: s for m, s in SWEEPS.items() if s["defenses"]}


def _figure(name, caption, category="Results"):
    paths = [f"results/figures/{name}.{ext}" for ext in ("png", "svg", "pdf")]
    caption = str(
        Path(workflow.basedir) / f"workflow/report/{caption}.rst"
    )  # report() outside a rule: absolute
    return {
        name: report(paths[0], caption=caption, category=category),
        f"{name}_vector": paths[1:],
    }


REPORT_FIGURES = {
    **_figure("heatmaps", "heatmaps"),
    **_figure("runtime_asr", "runtime_asr"),
    **_figure("smoothness", "smoothness"),
}
if len(STUDY["clean_budgets"]) > 1 and SE_COLUMNS:
    REPORT_FIGURES.update(_figure("sample_efficiency", "sample_efficiency"))
if any(len(s["defenses"]) > 1 for s in SWEEPS.values()):
    REPORT_FIGURES.update(_figure("tradeoff", "tradeoff"))
if PARAMS.analysis.retune.enabled:
    REPORT_FIGURES.update(_figure("retune", "retune"))
# Does a purification last (docs/results/lasting.md): rate-swept attack ids (<family>_r<rate>), swept
# defense ids, P-ASR; each table and figure only when the study has its data.
RATE_SWEEP = rate_sweep(STUDY["attacks"])
HAS_VARIANTS = any(len(s["defenses"]) > 1 for s in SWEEPS.values())
if RATE_SWEEP:
    REPORT_FIGURES.update(_figure("poison_rate", "poison_rate"))
LASTING_TABLES = {}
if HAS_VARIANTS:
    LASTING_TABLES["stability"] = "results/tables/stability.md"
if HAS_VARIANTS or RATE_SWEEP or PARAMS.analysis.retune.enabled:
    LASTING_TABLES["checklist"] = "results/tables/checklist.md"
REPORT_FIGURES.update(
    {
        **_figure("aggregate", "aggregate"),
        **_figure("improvement", "improvement"),
        **_figure("ranks", "ranks"),
    }
)
PLOT_DATA = {
    "data_runtime_asr": "results/plots/runtime_asr.csv",
    "data_aggregate": "results/plots/aggregate.csv",
    "data_improvement": "results/plots/improvement.csv",
    "data_ranks": "results/plots/ranks.csv",
}
if SE_COLUMNS:
    PLOT_DATA.update(
        data_se_asr="results/plots/sample_efficiency_asr.csv",
        data_se_acc="results/plots/sample_efficiency_acc.csv",
    )
if SWEEPS:
    PLOT_DATA["data_tradeoff"] = "results/plots/tradeoff.csv"

# t-SNE of penultimate features, on the study's first dataset, model, budget and seeds.
FIRST = dict(
    dataset=STUDY["datasets"][0],
    model=STUDY["models"][0],
    budget=STUDY["clean_budgets"][0],
    seed=STUDY["seeds"][0],
    dseed=STUDY["defense_seeds"][0],
)
RUN_KEYS = {
    tuple(
        r[k]
        for k in ("dataset", "model", "attack", "defense", "budget", "seed", "dseed")
    )
    for r in STUDY_RUNS
}


def _has_run(attack, defense):
    f = FIRST
    return (
        f["dataset"],
        f["model"],
        attack,
        defense,
        f["budget"],
        f["seed"],
        f["dseed"],
    ) in RUN_KEYS


TSNE_DEFENSES = {
    a: [d for d in ["none", *FIGS["tsne"]["defenses"]] if _has_run(a, d)]
    for a in FIGS["tsne"]["attacks"]
}
TSNE_DEFENSES = {
    a: ds for a, ds in TSNE_DEFENSES.items() if ds[:1] == ["none"] and len(ds) > 1
}
TSNE_FIGURES = [
    f"results/figures/tsne/{FIRST['dataset']}/{FIRST['model']}/{a}.png"
    for a in TSNE_DEFENSES
]

REPORT_OUTPUTS = [
    "results/metrics.csv",
    "results/table.md",
    "results/table.html",
    *TABLES,
    *LASTING_TABLES.values(),
    "results/headline.json",
    *PLOT_DATA.values(),
    *[p for v in REPORT_FIGURES.values() for p in ([v] if isinstance(v, str) else v)],
    *TSNE_FIGURES,
]

# DVC's own views, copied into dvc.yaml by snake2dvc.py: `dvc metrics show`, `dvc plots show`.
DVC_METRICS = ["results/headline.json"]
DVC_PLOTS = [
    {
        "results/plots/runtime_asr.csv": {
            "template": "scatter",
            "x": "runtime_s",
            "y": "asr",
            "title": "ASR after purification vs seconds per purification",
            "x_label": "purification wall time (s)",
            "y_label": "ASR after purification (%)",
        }
    }
]
for key, metric in (("data_se_asr", "ASR"), ("data_se_acc", "ACC")):
    if key in PLOT_DATA:
        DVC_PLOTS.append(
            {
                PLOT_DATA[key]: {
                    "template": "linear",
                    "x": "clean_budget",
                    "y": list(SE_COLUMNS),
                    "title": f"{metric} against the clean budget",
                    "x_label": "clean images given to the defense",
                    "y_label": f"{metric} (%)",
                }
            }
        )
if "data_tradeoff" in PLOT_DATA:
    DVC_PLOTS.append(
        {
            PLOT_DATA["data_tradeoff"]: {
                "template": "scatter",
                "x": "acc",
                "y": "asr",
                "title": "Trade-off: ASR against ACC as each knob sweeps",
                "x_label": "ACC (%)",
                "y_label": "ASR (%)",
            }
        }
    )


def tsne_inputs(wildcards):
    return [
        f"results/features/{wildcards.dataset}/{wildcards.model}/{wildcards.attack}/{d}/"
        f"n{FIRST['budget']}_seed{FIRST['seed']}_d{FIRST['dseed']}.pt"
        for d in TSNE_DEFENSES[wildcards.attack]
    ]
