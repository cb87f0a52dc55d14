"""results/metrics.csv and what is made from it: Markdown and LaTeX tables, the headline JSON and
the plot data files DVC shows (``dvc metrics show``, ``dvc plots show``).

metrics.csv has one row per (dataset, model, attack, defense, clean_budget, seed, defense_seed):
``seed`` trained the model, ``defense_seed`` drew the clean set and the defense's random stream.
Percentages are in 0–100. Figures and tables read only this file (and the figure settings).
"""

from __future__ import annotations

import html
import re

from pathlib import Path

import pandas as pd

from . import stats
from .io import read_json, read_record, write_json, write_text

KEYS = ["dataset", "model", "attack", "defense", "clean_budget", "seed", "defense_seed"]
COLUMNS = KEYS + ["acc", "asr", "ra", "der", "runtime_s", "n_clean", "acc_before", "asr_before",
                  "ra_before", "defense_type", "step_s", "device", "precision", "threads", "lambda_max", "trace_h",
                  "trace_h_se"]
SMOOTHNESS = ["lambda_max", "trace_h", "trace_h_se"]
GROUP = stats.GROUP  # one main table (and heatmap) per group
METRICS = {"acc": "ACC", "asr": "ASR", "ra": "RA", "der": "DER"}
RETUNED = {"p_asr": "P-ASR (ASR after the re-tuning attack, analysis.retune)"}
HIGHER_IS_BETTER = stats.HIGHER_IS_BETTER
UNDEFENDED = stats.UNDEFENDED


RETUNE = ["p_acc", "p_asr", "p_ra", "p_acc_floor", "p_asr_floor"]


def write_metrics_csv(json_paths, out_path: str | Path, smoothness_paths=(), retune_paths=(),
                      floor_paths=()) -> pd.DataFrame:
    """Rows in the order given (the study's order in params.yaml), which tables and figures keep;
    each run's wall-clock fields come from its ``.time.json``. ``smoothness_paths``, when given, are
    the runs' smoothness records in the same order; ``retune_paths`` and ``floor_paths`` the
    re-tuning attack's records (matched by run; the floor by attack and run), adding the RETUNE
    columns (only then)."""
    rows = [read_record(p) for p in json_paths]
    if smoothness_paths:
        if len(smoothness_paths) != len(rows):
            raise ValueError(f"{len(smoothness_paths)} smoothness files for {len(rows)} runs")
        rows = [{**row, **{k: read_json(p)[k] for k in SMOOTHNESS}} for row, p in zip(rows, smoothness_paths)]
    columns = COLUMNS
    if retune_paths:
        tuned = {tuple(r[k] for k in KEYS): r for r in map(read_json, retune_paths)}
        floor_keys = [k for k in KEYS if k != "defense"]
        floor = {tuple(r[k] for k in floor_keys): r for r in map(read_json, floor_paths)}
        for row in rows:
            t, f = tuned.get(tuple(row[k] for k in KEYS), {}), floor.get(tuple(row[k] for k in floor_keys), {})
            row.update(p_acc=t.get("p_acc"), p_asr=t.get("p_asr"), p_ra=t.get("p_ra"),
                       p_acc_floor=f.get("p_acc"), p_asr_floor=f.get("p_asr"))
        columns = COLUMNS + RETUNE
    frame = pd.DataFrame([{c: row.get(c) for c in columns} for row in rows], columns=columns)
    write_text(frame.to_csv(index=False, float_format="%.4f"), out_path)
    return frame


DYNAMICS = ["kind", "dataset", "model", "attack", "defense", "seed", "defense_seed", "step", "epoch",
            "acc", "asr", "ra", "lambda_max", "trace_h", "trace_h_se"]
DYNAMICS_METRICS = ["acc", "asr", "ra", "lambda_max", "trace_h"]


def write_dynamics_csv(json_paths, out_path: str | Path) -> pd.DataFrame:
    """One row per checkpoint of every trace (``measure_trace``'s records), in the order given;
    ``epoch`` is the step over the training's steps per epoch (empty for purifications)."""
    rows = []
    for path in json_paths:
        record = read_json(path)
        per_epoch = record.get("steps_per_epoch")
        for point in record["checkpoints"]:
            rows.append({**{k: record.get(k) for k in DYNAMICS[:7]}, **point,
                         "defense": record.get("defense", "(training)"),
                         "epoch": point["step"] / per_epoch if per_epoch else None})
    frame = pd.DataFrame([{c: row.get(c) for c in DYNAMICS} for row in rows], columns=DYNAMICS)
    write_text(frame.to_csv(index=False, float_format="%.8g"), out_path)
    return frame


def dynamics_summary(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Mean, min and max over training seeds of each metric per (attack, defense, step): the lines and
    bands of the dynamics figures, and their plot data."""
    part = frame[frame["kind"] == kind]
    keys = ["dataset", "model", "attack", "defense", "step"] + (["epoch"] if kind == "train" else [])
    grouped = part.groupby(keys, sort=False, dropna=False)[DYNAMICS_METRICS]
    out = grouped.agg(["mean", "min", "max"])
    out.columns = [f"{m}_{s}" if s != "mean" else m for m, s in out.columns]
    out["n"] = grouped.size()
    return out.reset_index()


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


def _interval_text(series: pd.Series, decimals: int = 2) -> str:
    iv = stats.interval(series)
    return _cell(iv, decimals, "md", show_n=False)


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean [95% interval] per dataset, model, attack, defense and clean budget, in study order;
    ``runs`` counts the (seed, defense_seed) pairs."""
    group = ["dataset", "model", "attack", "defense", "clean_budget"]
    out = frame.groupby(group, sort=False).agg(
        ACC=("acc", _interval_text), ASR=("asr", _interval_text), RA=("ra", _interval_text),
        DER=("der", _interval_text), seconds=("runtime_s", _interval_text), runs=("seed", "count")).reset_index()
    return out


def _markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def group_name(dataset: str, model: str, budget) -> str:
    """File-name stem of a group's table: ``fashion_mnist-cnn-n600``."""
    return f"{dataset}-{model}-n{int(budget)}"


def defense_order(part: pd.DataFrame) -> list[str]:
    """The study's defense order, merged over attacks (a defense skipped on the first attack keeps its place)."""
    order: list[str] = []
    for _, runs in part.groupby("attack", sort=False):
        previous = None
        for d in runs["defense"].unique():
            if d not in order:
                order.insert(order.index(previous) + 1 if previous is not None else 0, d)
            previous = d
    return order


def pivot(part: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean and number of runs of ``metric`` per attack (rows) and defense (columns), study order."""
    agg = part.groupby(["attack", "defense"], sort=False)[metric].agg(["mean", "count"])
    order = dict(index=part["attack"].unique(), columns=defense_order(part))
    return (agg["mean"].unstack("defense").reindex(**order), agg["count"].unstack("defense").reindex(**order))


def _cell(iv: stats.Interval | None, decimals: int, fmt: str, show_n: bool = False) -> str:
    """``mean [lo, hi]`` (``mean`` alone for one run), ``(n=k)`` appended when ``show_n``."""
    if iv is None or iv.n == 0:
        return "—" if fmt != "tex" else "--"
    text = f"{iv.mean:.{decimals}f}"
    if iv.has_interval:
        bounds = f"{iv.lo:.{decimals}f}, {iv.hi:.{decimals}f}"
        text += f" [{bounds}]" if fmt != "tex" else r"{\scriptsize\,[" + bounds + "]}"
    if show_n:
        text += f" (n={iv.n})" if fmt != "tex" else rf"{{\scriptsize\,$n{{=}}{iv.n}$}}"
    return text


def _groups(frame: pd.DataFrame):
    return frame.groupby(GROUP, sort=False)


def run_count(part: pd.DataFrame) -> int | None:
    """The number of runs behind every cell of ``part``, or None when cells differ."""
    counts = part.groupby(["attack", "defense"], sort=False).size().unique()
    return int(counts[0]) if len(counts) == 1 else None


def per_metric(part: pd.DataFrame):
    """(metric, label, attacks, defenses, intervals, marks) per metric of one group's runs."""
    attacks, defenses = list(part["attack"].unique()), defense_order(part)
    shown = {**METRICS, **{m: label for m, label in RETUNED.items() if m in part and part[m].notna().any()}}
    for metric, label in shown.items():
        yield (metric, label, attacks, defenses, stats.cell_intervals(part, metric), stats.row_marks(part, metric))


MARK = {"md": {"best": "**{}**", "tie": "*{}*"}, "html": {"best": "<b>{}</b>", "tie": "<i>{}</i>"},
        "tex": {"best": r"\textbf{{{}}}", "tie": r"\textit{{{}}}"}}


def marked_cells(part: pd.DataFrame, decimals: int, fmt: str):
    """(label, rows) per metric: rows[attack][defense] is the cell's text with its mark."""
    n = run_count(part)
    for metric, label, attacks, defenses, cells, marks in per_metric(part):
        rows = {}
        for a in attacks:
            rows[a] = {}
            for d in defenses:
                text = _cell(cells.get((a, d)), decimals, fmt, show_n=n is None)
                if fmt == "html":
                    text = html.escape(text)
                mark = marks.get((a, d))
                rows[a][d] = MARK[fmt][mark].format(text) if mark else text
        yield metric, label, rows


LEGEND = ("Each cell: mean over the runs [95% percentile-bootstrap interval]; a run = one training "
          "seed (its own backdoored model and clean draw) × defense seed. **Bold**: the best defense "
          "of the row, its paired difference to every other defense supported by a 95% interval; "
          "*italic*: the best mean and the defenses it is not separable from (a tie). No mark with one "
          "run per cell. The undefended model (none) is the reference, never marked.")


def _runs_line(part: pd.DataFrame) -> str:
    n = run_count(part)
    seeds = ", ".join(map(str, sorted(part["seed"].unique())))
    dseeds = ", ".join(map(str, sorted(part["defense_seed"].unique())))
    count = f"n = {n} runs per cell" if n is not None else "runs per cell differ: (n=…) in each cell"
    return f"{count} (training seeds {seeds}; defense seeds {dseeds})"


def markdown_report(frame: pd.DataFrame, benign=("benign",)) -> str:
    parts = ["# Results\n",
             "ACC, ASR and RA in percent on the test set; DER = (max(0, ΔASR) − max(0, ΔACC) + 100) / 2 "
             "against the undefended model. " + LEGEND + " — = not run (study.skip).\n"]
    for (dataset, model, budget), part in _groups(frame):
        parts.append(f"\n## {dataset} · {model} · clean budget {budget}\n")
        parts.append(_runs_line(part) + ".\n")
        for _, label, rows in marked_cells(part, 2, "md"):
            table = pd.DataFrame(rows).T.rename_axis("attack").reset_index()
            parts.append(f"\n{label} (%) per attack (rows) and defense (columns):\n")
            parts.append(_markdown(table))
        if "p_asr_floor" in part and part["p_asr_floor"].notna().any():
            floor = part.drop_duplicates(["attack", "seed", "defense_seed"]).groupby("attack", sort=False)
            cells = ", ".join(f"{a} {_cell(stats.interval(r['p_asr_floor']), 2, 'md')}" for a, r in floor)
            parts.append(f"\nThe floor: the benign model re-tuned the same way, P-ASR per attack: {cells}.\n")
        parts.append(across_attacks_markdown(part, benign))
        parts.append(spread_markdown(part))
        parts.append("\n\nEvery cell, mean [95% interval] over its runs; seconds = wall time of the defense:\n")
        summ = summary(part)
        parts.append(_markdown(summ[["attack", "defense", "ACC", "ASR", "RA", "DER", "seconds", "runs"]]))
        parts.append("")
    return "\n".join(parts) + "\n"


def _iv_text(value, lo, hi, decimals=1) -> str:
    return _cell(stats.Interval(value, lo, hi, 0 if pd.isna(value) else 1), decimals, "md")


def across_attacks_markdown(part: pd.DataFrame, benign=("benign",)) -> str:
    """The aggregate (IQM), probability of improvement over FT and rank sections of one group."""
    agg = stats.aggregate(part, benign)
    out = ["\n\n### Across attacks\n",
           f"Interquartile mean over runs × attacks ({', '.join(agg['attacks'].iloc[0].split()) if len(agg) else '—'}) "
           "with a stratified-bootstrap 95% interval (runs resampled within each attack). DER ↑, ASR ↓, "
           "ΔACC = ACC change against the backdoored model (points) ↑.\n"]
    table = pd.DataFrame({"defense": agg["defense"],
                          "DER": [_iv_text(r.der, r.der_lo, r.der_hi) for r in agg.itertuples()],
                          "ASR": [_iv_text(r.asr, r.asr_lo, r.asr_hi) for r in agg.itertuples()],
                          "ΔACC": [_iv_text(r.dacc, r.dacc_lo, r.dacc_hi) for r in agg.itertuples()],
                          "runs per attack": agg["runs"]})
    out.append(_markdown(table))
    imp = stats.improvement(part, benign=benign)
    if len(imp):
        out.append(f"\n\nProbability that a defense's DER beats {stats.CONTROL}'s on a paired run (same model, "
                   "same clean draw), over attacks, with a stratified 95% interval; *supported* when the "
                   "interval excludes ½:\n")
        out.append(_markdown(pd.DataFrame({
            "defense": imp["defense"], f"P(beats {stats.CONTROL})": [_iv_text(r.p, r.p_lo, r.p_hi, 2) for r in imp.itertuples()],
            "supported": ["yes, better" if r.supported and r.p > 0.5 else "yes, worse" if r.supported
                          else "not separable" for r in imp.itertuples()],
            "paired runs": [r.runs * len(r.attacks.split()) for r in imp.itertuples()]})))
    rank = stats.ranking(part, benign=benign)
    if rank is not None:
        order = rank.mean_ranks.sort_values()
        out.append(f"\n\nMean rank by DER (1 = best) over {rank.blocks} blocks (attack × run); Friedman "
                   f"p = {rank.friedman_p:.2g}. Pairwise Wilcoxon signed-rank tests, Holm-corrected: a pair "
                   "with p ≥ 0.05 is not separable (`results/figures/ranks.*`).\n")
        not_sep = [" ".join(o for o in order.index if o != d and not rank.pairwise_p.at[d, o] < 0.05) or "—"
                   for d in order.index]
        out.append(_markdown(pd.DataFrame({"defense": order.index, "mean rank": [f"{v:.2f}" for v in order],
                                           "not separable from": not_sep})))
    return "\n".join(out)


def spread_markdown(part: pd.DataFrame) -> str:
    """Where a cell's spread comes from, when the group has ≥ 2 training seeds × ≥ 2 defense seeds."""
    comp = stats.variance_components(part, "asr")
    if comp.empty:
        return ""
    return "\n".join([
        "\n\n### Where the spread comes from\n",
        "ASR standard deviation between training seeds (a new backdoored model) and between defense "
        "seeds (a new clean draw and random stream on the same model), from a one-way random-effects "
        "ANOVA per cell (method of moments); share = the training seed's part of the variance.\n",
        _markdown(pd.DataFrame({
            "attack": comp["attack"], "defense": comp["defense"], "models × defense seeds":
            [f"{m} × {k}" for m, k in zip(comp["models"], comp["defense_seeds"])],
            "sd training seed": [f"{v:.1f}" for v in comp["sd_training"]],
            "sd defense seed": [f"{v:.1f}" for v in comp["sd_defense"]],
            "share training": [f"{v:.2f}" if v == v else "—" for v in comp["share_training"]]}))])


def _tex(text: str) -> str:
    return str(text).replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


def latex_table(part: pd.DataFrame, caption: str, label: str) -> str:
    """One booktabs table: a panel per metric (ACC, ASR, RA, DER), one row per attack, a column per
    defense, mean and [95% interval]; best in bold, ties in italics. Needs \\usepackage{booktabs,graphicx}."""
    defenses = defense_order(part)
    lines = [r"\begin{table*}[t]", r"\centering", r"\caption{" + _tex(caption) + "}", r"\label{" + label + "}",
             r"\resizebox{\textwidth}{!}{%", r"\begin{tabular}{l" + "c" * len(defenses) + "}", r"\toprule",
             "attack & " + " & ".join(_tex(d) for d in defenses) + r" \\"]
    for metric, label_m, rows in marked_cells(part, 1, "tex"):
        arrow = r"$\uparrow$" if HIGHER_IS_BETTER[metric] else r"$\downarrow$"
        lines += [r"\midrule", rf"\multicolumn{{{len(defenses) + 1}}}{{l}}{{\textit{{{label_m} (\%) {arrow}}}}} \\"]
        for attack, cells in rows.items():
            lines.append(_tex(attack) + " & " + " & ".join(cells[d] for d in defenses) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table*}", ""]
    return "\n".join(lines)


def latex_tables(frame: pd.DataFrame) -> dict[str, str]:
    """``{group_name: table}`` for every (dataset, model, clean budget) of the study."""
    out = {}
    for (dataset, model, budget), part in _groups(frame):
        caption = (f"{dataset}, {model}, clean budget {budget}: mean [95\\% bootstrap interval] over runs; "
                   f"{_runs_line(part)}. Bold: best defense of the row, separated from every other by "
                   f"paired 95\\% intervals; italic: a tie; -- = not run (study.skip).")
        name = group_name(dataset, model, budget)
        out[name] = latex_table(part, caption, f"tab:{name}")
    return out


def backdoor_attacks(frame: pd.DataFrame, benign=("benign",)) -> list[str]:
    return [a for a in frame["attack"].unique() if a not in benign]


def common_attacks(part: pd.DataFrame, benign=("benign",)) -> list[str]:
    """The backdoor attacks every defense of ``part`` ran (study.skip may leave some out)."""
    return stats.common_attacks(part, part["defense"].unique(), benign)


def runtime_effect(frame: pd.DataFrame, benign=("benign",)) -> pd.DataFrame:
    """Per group and defense: seconds per purification (mean, std over runs) and mean ACC / ASR after,
    over the backdoor attacks every defense ran (``attacks``); ASR with its stratified 95% interval."""
    rows = []
    for (dataset, model, budget), part in _groups(frame):
        attacks = common_attacks(part, benign)
        sub = part[part["attack"].isin(attacks)]
        for defense, runs in sub.groupby("defense", sort=False):
            asr = stats.stratified(stats.score_matrix(sub, defense, "asr", attacks), stats.mean_all)
            rows.append(dict(dataset=dataset, model=model, clean_budget=budget, defense=defense,
                             runtime_s=runs["runtime_s"].mean(), runtime_std=runs["runtime_s"].std(ddof=1),
                             asr=runs["asr"].mean(), asr_lo=asr.lo, asr_hi=asr.hi, acc=runs["acc"].mean(),
                             der=runs["der"].mean(), runs=len(runs), attacks=" ".join(attacks)))
    return pd.DataFrame(rows)


def headline(frame: pd.DataFrame, benign=("benign",)) -> dict:
    """Compact headline numbers for ``dvc metrics show``: per group and defense, ACC, ASR, DER and
    seconds averaged over the backdoor attacks every defense ran."""
    out: dict = {}
    for row in runtime_effect(frame, benign).itertuples(index=False):
        key = group_name(row.dataset, row.model, row.clean_budget)
        out.setdefault(key, {})[row.defense] = {
            "acc": round(row.acc, 2), "asr": round(row.asr, 2), "der": round(row.der, 2),
            "seconds": round(row.runtime_s, 2)}
    return out


def sample_efficiency(frame: pd.DataFrame, attacks, defenses) -> pd.DataFrame:
    """Mean and std of ACC and ASR per (dataset, model, attack, defense, clean budget)."""
    sub = frame[frame["attack"].isin(attacks) & frame["defense"].isin(defenses)]
    stats = sub.groupby(["dataset", "model", "attack", "defense", "clean_budget"], sort=False).agg(
        acc=("acc", "mean"), acc_std=("acc", "std"), asr=("asr", "mean"), asr_std=("asr", "std"),
        runs=("acc", "size")).reset_index()
    return stats.sort_values(["dataset", "model", "attack", "defense", "clean_budget"], kind="stable")


def sample_efficiency_wide(frame: pd.DataFrame, attacks, defenses, metric: str) -> pd.DataFrame:
    """One row per clean budget, a column ``<attack>_<defense>`` per curve (DVC's plot format)."""
    stats = sample_efficiency(frame, attacks, defenses)
    budgets = sorted(frame["clean_budget"].unique())
    wide = pd.DataFrame({"clean_budget": budgets})
    for attack in attacks:
        for defense in defenses:
            part = stats[(stats.attack == attack) & (stats.defense == defense)].groupby("clean_budget")[metric].mean()
            wide[f"{attack}_{defense}"] = [part.get(b, float("nan")) for b in budgets]
    return wide


def tradeoff(frame: pd.DataFrame, sweeps: dict, defense_params: dict) -> pd.DataFrame:
    """Mean ACC / ASR of every swept defense. ``sweeps``: {method: {knob, defenses}} (figures.tradeoff);
    ``defense_params``: merged params per defense id; the method's own id holds the study's value."""
    rows = []
    for method, sweep in sweeps.items():
        knob = sweep["knob"]
        study_value = defense_params.get(method, {}).get(knob)
        for defense in sweep["defenses"]:
            runs = frame[frame["defense"] == defense]
            if runs.empty:
                continue
            value = defense_params[defense][knob]
            for (dataset, model, attack, budget), r in runs.groupby(["dataset", "model", "attack", "clean_budget"],
                                                                     sort=False):
                rows.append(dict(dataset=dataset, model=model, attack=attack, clean_budget=budget, method=method,
                                 defense=defense, knob=knob, value=value, study=bool(value == study_value),
                                 acc=r["acc"].mean(), asr=r["asr"].mean(), runs=len(r)))
    return pd.DataFrame(rows, columns=["dataset", "model", "attack", "clean_budget", "method", "defense", "knob",
                                       "value", "study", "acc", "asr", "runs"])


def html_report(frame: pd.DataFrame) -> str:
    """The per-metric tables of ``markdown_report`` as one HTML page (for the Snakemake report)."""
    parts = ["<html><head><meta charset='utf-8'><style>body{font-family:sans-serif;font-size:13px}"
             "table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #ccc;padding:2px 6px;"
             "text-align:right}th{background:#eee}td:first-child{text-align:left}</style></head><body>",
             "<p>ACC, ASR, RA and DER in percent. " + html.escape(LEGEND).replace("**Bold**", "<b>Bold</b>")
             .replace("*italic*", "<i>italic</i>") + " — = not run (study.skip).</p>"]
    for (dataset, model, budget), part in _groups(frame):
        parts.append(f"<h2>{html.escape(f'{dataset} · {model} · clean budget {budget}')}</h2>")
        parts.append(f"<p>{html.escape(_runs_line(part))}</p>")
        for _, label, rows in marked_cells(part, 2, "html"):
            defenses = next(iter(rows.values())).keys() if rows else []
            head = "<tr><th>attack</th>" + "".join(f"<th>{html.escape(str(d))}</th>" for d in defenses) + "</tr>"
            body = [f"<tr><td>{html.escape(str(a))}</td>" + "".join(f"<td>{c}</td>" for c in cells.values()) + "</tr>"
                    for a, cells in rows.items()]
            parts.append(f"<h3>{label} (%)</h3><table>" + head + "".join(body) + "</table>")
    return "\n".join(parts + ["</body></html>"]) + "\n"


# -- does a purification last? poisoning rates, stability, the SoK's checklist (docs/results/lasting.md)

RATE_ID = re.compile(r"^(?P<family>.+)_r(?P<rate>\d+(?:p\d+)?)$")


def rate_sweep(attacks) -> dict[str, dict[str, float]]:
    """{family: {attack id: rate in percent}} for ids named ``<family>_r<rate>`` ("p" for the decimal
    point: badnets_r0p5 = 0.5%), in the given order; only families with two or more rates."""
    out: dict[str, dict[str, float]] = {}
    for attack in attacks:
        m = RATE_ID.match(str(attack))
        if m:
            out.setdefault(m["family"], {})[attack] = float(m["rate"].replace("p", "."))
    return {f: ids for f, ids in out.items() if len(set(ids.values())) > 1}


def poison_rate_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean [95% interval] of ASR and P-ASR per group, family, rate and defense (rate-swept ids only),
    and the floor's mean P-ASR (the benign model re-tuned with that attack's images)."""
    sweep = rate_sweep(frame["attack"].unique())
    rows = []
    for (dataset, model, budget), part in _groups(frame):
        for family, ids in sweep.items():
            for attack, rate in sorted(ids.items(), key=lambda kv: kv[1]):
                runs = part[part["attack"] == attack]
                for defense, cell in runs.groupby("defense", sort=False):
                    row = dict(dataset=dataset, model=model, clean_budget=budget, family=family, rate=rate,
                               attack=attack, defense=defense)
                    for metric in ("asr", "p_asr", "p_asr_floor"):
                        iv = stats.interval(cell[metric]) if metric in cell else stats.interval([])
                        row.update({metric: iv.mean, f"{metric}_lo": iv.lo, f"{metric}_hi": iv.hi})
                    row["runs"] = len(cell)
                    rows.append(row)
    return pd.DataFrame(rows)


STABILITY_NOTE = (
    "Hyperparameter stability, after the SoK's Mean Absolute Difference score (Abad et al., \"SoK: The "
    "Last Line of Defense: On Backdoor Defense Evaluation\", arXiv 2511.13143, 2025). Its exact formula "
    "could not be read here, so this is the study's stated substitute, *MAD from the study's value*: per "
    "method, the mean over the other values of its knob (figures.tradeoff) of |metric(value) − "
    "metric(study's value)| on the same run and attack, in points, then the mean over runs × the backdoor "
    "attacks every value ran, with a stratified 95% bootstrap interval (runs resampled within each "
    "attack). 0 = the knob changes nothing; lower is more stable.")


def stability_markdown(frame: pd.DataFrame, sweeps: dict, benign=("benign",)) -> str:
    """results/tables/stability.md: MAD of ASR and ACC per swept method and group."""
    parts = ["# Hyperparameter stability\n", STABILITY_NOTE + "\n"]
    for (dataset, model, budget), part in _groups(frame):
        table = stats.stability(part, sweeps, benign)
        if table.empty:
            continue
        parts.append(f"\n## {dataset} · {model} · clean budget {budget}\n")
        parts.append(_markdown(pd.DataFrame({
            "method": table["method"], "knob (values)": [f"{k} ({v})" for k, v in zip(table["knob"], table["values"])],
            "MAD of ASR (points)": [_iv_text(r.mad_asr, r.mad_asr_lo, r.mad_asr_hi, 2) for r in table.itertuples()],
            "MAD of ACC (points)": [_iv_text(r.mad_acc, r.mad_acc_lo, r.mad_acc_hi, 2) for r in table.itertuples()],
            "attacks": [a or "—" for a in table["attacks"]], "runs": table["runs"]})))
        parts.append("")
    return "\n".join(parts) + "\n"


CHECKLIST_NOTE = (
    "The SoK's checklist (Abad et al., arXiv 2511.13143) per method, every column from metrics.csv; lower "
    "is better in each. **ACC drop**: the benign model's ACC before minus after the defense (points; "
    "benign-model behaviour). **ASR**, **P-ASR**: mean over runs × the backdoor attacks every method ran, "
    "right after the defense and after the re-tuning attack (analysis.retune). **Stability**: MAD of ASR "
    "from the study's value as its knob sweeps (`stability.md`). **Seconds**: wall time of one "
    "purification job, over all its runs and attacks. Intervals: 95% bootstrap over runs, stratified by "
    "attack; — = the study has no data for the column.")


def _stratified_cell(part: pd.DataFrame, defense: str, metric: str, attacks) -> str:
    if metric not in part or not attacks or part.loc[part["defense"] == defense, metric].isna().all():
        return "—"
    m = stats.score_matrix(part, defense, metric, attacks)
    return _cell(stats.stratified(m, stats.mean_all), 2, "md") if len(m) else "—"


def checklist(part: pd.DataFrame, benign=("benign",), stability: pd.DataFrame | None = None) -> pd.DataFrame:
    """One group's checklist: a row per defense (study order), the columns of CHECKLIST_NOTE as text."""
    part = part.assign(acc_drop=part["acc_before"] - part["acc"])
    attacks = common_attacks(part, benign)
    clean = [a for a in part["attack"].unique() if a in set(benign)]
    mad = {} if stability is None else {r.method: _iv_text(r.mad_asr, r.mad_asr_lo, r.mad_asr_hi, 2)
                                        for r in stability.itertuples()}
    rows = []
    for defense in defense_order(part):
        runs = part[part["defense"] == defense]
        rows.append({"defense": defense,
                     "ACC drop on the benign model": _stratified_cell(part, defense, "acc_drop",
                                                                      [a for a in clean if a in set(runs["attack"])]),
                     "ASR (%)": _stratified_cell(part, defense, "asr", attacks),
                     "P-ASR (%)": _stratified_cell(part, defense, "p_asr", attacks),
                     "stability: MAD of ASR": mad.get(defense, "—"),
                     "seconds per job": _cell(stats.stratified(stats.score_matrix(
                         part, defense, "runtime_s", list(runs["attack"].unique())), stats.mean_all), 1, "md"),
                     "runs": int(runs[stats.RUN].drop_duplicates().shape[0])})
    return pd.DataFrame(rows)


def checklist_markdown(frame: pd.DataFrame, benign=("benign",), sweeps: dict | None = None,
                       variants=()) -> str:
    """results/tables/checklist.md: the checklist per group; ``variants`` (swept ids) feed only stability."""
    parts = ["# The SoK's checklist per method\n", CHECKLIST_NOTE + "\n"]
    for (dataset, model, budget), part in _groups(frame):
        table = stats.stability(part, sweeps or {}, benign)
        main = part[~part["defense"].isin(set(variants))]
        parts.append(f"\n## {dataset} · {model} · clean budget {budget}\n")
        attacks = common_attacks(main, benign)
        parts.append(f"Backdoor attacks: {', '.join(attacks) or '—'}; benign models: "
                     f"{', '.join(a for a in main['attack'].unique() if a in set(benign)) or '—'}.\n")
        parts.append(_markdown(checklist(main, benign, table)))
        parts.append("")
    return "\n".join(parts) + "\n"
