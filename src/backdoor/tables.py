"""results/metrics.csv and the Markdown tables made from it.

metrics.csv has one row per (dataset, model, attack, defense, clean_budget, seed, defense_seed):
``seed`` trained the model, ``defense_seed`` drew the clean set and the defense's random stream.
Percentages are in 0–100. Figures and tables read only this file.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .io import read_record, write_json, write_text

KEYS = ["dataset", "model", "attack", "defense", "clean_budget", "seed", "defense_seed"]
COLUMNS = KEYS + ["acc", "asr", "ra", "der", "runtime_s", "n_clean", "acc_before", "asr_before",
                  "ra_before", "defense_type", "step_s", "device", "precision", "threads", "lambda_max", "trace_h",
                  "trace_h_se"]
SMOOTHNESS = ["lambda_max", "trace_h", "trace_h_se"]


def write_metrics_csv(json_paths, out_path: str | Path, smoothness_paths=()) -> pd.DataFrame:
    """Rows in the order given (the study's order in params.yaml), which tables and figures keep;
    each run's wall-clock fields come from its ``.time.json``. ``smoothness_paths``, when given, are
    the runs' smoothness records in the same order."""
    rows = [read_record(p) for p in json_paths]
    if smoothness_paths:
        if len(smoothness_paths) != len(rows):
            raise ValueError(f"{len(smoothness_paths)} smoothness files for {len(rows)} runs")
        rows = [{**row, **{k: read_json(p)[k] for k in SMOOTHNESS}} for row, p in zip(rows, smoothness_paths)]
    frame = pd.DataFrame([{c: row.get(c) for c in COLUMNS} for row in rows], columns=COLUMNS)
    write_text(frame.to_csv(index=False, float_format="%.4f"), out_path)
    return frame


def write_metrics_json(frame: pd.DataFrame, out_path: str | Path) -> dict:
    """The headline numbers for `dvc metrics show` / `dvc exp show`: mean ACC and ASR per dataset,
    model, clean budget (``n600``), attack and defense (nested, so DVC names them
    ``fashion_mnist.cnn.n600.badnets.ft.acc``)."""
    tree: dict = {}
    for (dataset, model, budget, attack, defense), part in frame.groupby(
            ["dataset", "model", "clean_budget", "attack", "defense"], sort=False):
        cell = tree.setdefault(dataset, {}).setdefault(model, {}).setdefault(f"n{budget}", {}).setdefault(attack, {})
        cell[defense] = {"acc": round(float(part["acc"].mean()), 2), "asr": round(float(part["asr"].mean()), 2)}
    write_json(tree, out_path)
    return tree


def _mean_std(series: pd.Series) -> str:
    if len(series) > 1:
        return f"{series.mean():.2f} ± {series.std(ddof=1):.2f}"
    return f"{series.mean():.2f}"


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean (± std over training and defense seeds) per dataset, model, attack, defense and clean budget,
    in study order; ``runs`` counts the (seed, defense_seed) pairs."""
    group = ["dataset", "model", "attack", "defense", "clean_budget"]
    out = frame.groupby(group, sort=False).agg(
        ACC=("acc", _mean_std), ASR=("asr", _mean_std), RA=("ra", _mean_std), DER=("der", _mean_std),
        seconds=("runtime_s", _mean_std), runs=("seed", "count")).reset_index()
    return out


def _markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def markdown_report(frame: pd.DataFrame) -> str:
    parts = ["# Results\n",
             "ACC, ASR and RA in percent on the test set; DER = (max(0, ΔASR) − max(0, ΔACC) + 100) / 2 "
             "against the undefended model; seconds = wall time of the defense itself. "
             "Mean ± std over the runs (training seeds × defense seeds) where there are several.\n"]
    for (dataset, model, budget), part in summary(frame).groupby(["dataset", "model", "clean_budget"], sort=False):
        parts.append(f"\n## {dataset} · {model} · clean budget {budget}\n")
        parts.append(_markdown(part[["attack", "defense", "ACC", "ASR", "RA", "DER", "seconds", "runs"]]))
        pivot = part.assign(cell=part["ACC"] + " / " + part["ASR"]).pivot(
            index="attack", columns="defense", values="cell")
        pivot = pivot.reindex(index=part["attack"].unique(), columns=part["defense"].unique()).fillna("—")
        parts.append("\n\nACC / ASR per attack (rows) and defense (columns); — = left out by study.skip:\n")
        parts.append(_markdown(pivot.reset_index()))
        parts.append("")
    return "\n".join(parts) + "\n"


def write_markdown_table(csv_path: str | Path, out_path: str | Path) -> None:
    write_text(markdown_report(pd.read_csv(csv_path)), out_path)
