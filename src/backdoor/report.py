"""The report step: every table, figure, headline metric and plot data file made from metrics.csv.

``outputs`` maps the report rule's output names to paths; tables.py and plots.py make the content.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from . import plots, stats, tables
from .io import write_text


def _paths(value) -> list[str]:
    return [value] if isinstance(value, (str, Path)) else list(value)


def write(csv_path, outputs: dict, *, figures: dict, benign=("benign",), sweeps: dict | None = None,
          sweep_params: dict | None = None, dynamics_csv=None) -> None:
    """Write what ``outputs`` names: table, html, tex, headline, data_* (plot data) and the figures
    heatmaps, aggregate, improvement, ranks, runtime_asr, smoothness, sample_efficiency, tradeoff, retune,
    poison_rate (each with ``<name>_vector``), and from ``dynamics_csv`` (results/dynamics.csv) dynamics_training
    and dynamics_purification; the Markdown tables stability and checklist."""
    frame = pd.read_csv(csv_path)
    benign = tuple(benign)
    sweeps, sweep_params = sweeps or {}, sweep_params or {}
    write_text(tables.markdown_report(frame, benign), outputs["table"])
    write_text(tables.html_report(frame), outputs["html"])
    tex = tables.latex_tables(frame)
    for path in _paths(outputs.get("tex", [])):
        name = Path(path).stem
        if name not in tex:
            raise ValueError(f"{path}: metrics.csv has no runs for {name}")
        write_text(tex[name], path)
    write_text(json.dumps(tables.headline(frame, benign), indent=2, sort_keys=True) + "\n", outputs["headline"])

    # The swept variants have their own figure; the main figures show each method once.
    variants = {d for sweep in sweeps.values() for d in sweep["defenses"]} - set(sweeps)
    main = frame[~frame["defense"].isin(variants)]
    se = figures["sample_efficiency"]
    se_attacks = [a for a in se["attacks"] if a in set(frame["attack"])]
    se_defenses = [d for d in se["defenses"] if d in set(frame["defense"])]
    points = tables.tradeoff(frame, sweeps, sweep_params)
    data = {"data_runtime_asr": lambda: tables.runtime_effect(frame, benign),
            "data_se_asr": lambda: tables.sample_efficiency_wide(frame, se["attacks"], se["defenses"], "asr"),
            "data_se_acc": lambda: tables.sample_efficiency_wide(frame, se["attacks"], se["defenses"], "acc"),
            "data_tradeoff": lambda: points,
            "data_aggregate": lambda: stats.per_group(main, lambda part: stats.aggregate(part, benign)),
            "data_improvement": lambda: stats.per_group(main, lambda part: stats.improvement(part, benign=benign)),
            "data_ranks": lambda: stats.per_group(main, lambda part: stats.rank_table(part, benign))}
    dyn = pd.read_csv(dynamics_csv) if dynamics_csv else None
    if dyn is not None:
        data["data_dynamics_training"] = lambda: tables.dynamics_summary(dyn, "train")
        data["data_dynamics_purification"] = lambda: tables.dynamics_summary(dyn, "purify")
    for key, make in data.items():
        if key in outputs:
            write_text(make().to_csv(index=False, float_format="%.4f"), outputs[key])
    if "stability" in outputs:
        write_text(tables.stability_markdown(frame, sweeps, benign), outputs["stability"])
    if "checklist" in outputs:
        write_text(tables.checklist_markdown(frame, benign, sweeps, variants), outputs["checklist"])

    makers = {"heatmaps": lambda: plots.heatmap_figure(main),
              "aggregate": lambda: plots.aggregate_figure(main, benign),
              "improvement": lambda: plots.improvement_figure(main, benign),
              "ranks": lambda: plots.rank_figure(main, benign),
              "runtime_asr": lambda: plots.runtime_figure(main, benign),
              "smoothness": lambda: plots.smoothness_figure(frame, figures["smoothness"]["defenses"], benign),
              "sample_efficiency": lambda: plots.sample_efficiency_figure(frame, se_attacks, se_defenses),
              "tradeoff": lambda: plots.tradeoff_figure(points),
              "retune": lambda: plots.retune_figure(main, benign),
              "poison_rate": lambda: plots.poison_rate_figure(main)}
    if dyn is not None:
        makers["dynamics_training"] = lambda: plots.dynamics_training_figure(tables.dynamics_summary(dyn, "train"))
        makers["dynamics_purification"] = lambda: plots.dynamics_purification_figure(
            tables.dynamics_summary(dyn, "purify"), tables.dynamics_summary(dyn, "train"))
    for name, make in makers.items():
        if name in outputs:
            plots.save(make(), _paths(outputs[name]) + _paths(outputs.get(f"{name}_vector", [])))
