"""results/metrics.csv and what is made from it: Markdown and LaTeX tables, the headline JSON and
the plot data files DVC shows (``dvc metrics show``, ``dvc plots show``).

metrics.csv has one row per (dataset, model, attack, defense, clean_budget, seed, defense_seed):
``seed`` trained the model, ``defense_seed`` drew the clean set and the defense's random stream.
Percentages are in 0–100. Figures and tables read only this file (and the figure settings).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .io import read_json, read_record, write_json, write_text

KEYS = ["dataset", "model", "attack", "defense", "clean_budget", "seed", "defense_seed"]
COLUMNS = KEYS + ["acc", "asr", "ra", "der", "runtime_s", "n_clean", "acc_before", "asr_before",
                  "ra_before", "defense_type", "step_s", "device", "precision", "threads", "lambda_max", "trace_h",
                  "trace_h_se"]
SMOOTHNESS = ["lambda_max", "trace_h", "trace_h_se"]
GROUP = ["dataset", "model", "clean_budget"]  # one main table (and heatmap) per group
METRICS = {"acc": "ACC", "asr": "ASR", "ra": "RA", "der": "DER"}
HIGHER_IS_BETTER = {"acc": True, "asr": False, "ra": True, "der": True}
UNDEFENDED = "none"


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
    """Mean and std (NaN for one run) of ``metric`` per attack (rows) and defense (columns), study order."""
    stats = part.groupby(["attack", "defense"], sort=False)[metric].agg(["mean", "std"])
    order = dict(index=part["attack"].unique(), columns=defense_order(part))
    return (stats["mean"].unstack("defense").reindex(**order), stats["std"].unstack("defense").reindex(**order))


def best_cells(means: pd.DataFrame, metric: str, decimals: int) -> pd.DataFrame:
    """True where a defense is best in its row at the shown precision (ties all best); the
    undefended model is the reference, never a candidate."""
    shown = means.round(decimals).drop(columns=[UNDEFENDED], errors="ignore")
    target = shown.max(axis=1) if HIGHER_IS_BETTER[metric] else shown.min(axis=1)
    best = shown.eq(target, axis=0) & shown.notna()
    return best.reindex(columns=means.columns, fill_value=False)


def _cell(mean: float, std: float, decimals: int, fmt: str) -> str:
    if pd.isna(mean):
        return "—" if fmt == "md" else "--"
    if pd.isna(std):
        return f"{mean:.{decimals}f}"
    sep = " ± " if fmt == "md" else r"{\scriptsize$\pm$"
    return f"{mean:.{decimals}f}{sep}{std:.{decimals}f}" + ("" if fmt == "md" else "}")


def _groups(frame: pd.DataFrame):
    return frame.groupby(GROUP, sort=False)


def per_metric(part: pd.DataFrame, decimals: int):
    """(metric, label, means, stds, best) per metric of one group's runs, as every table shows them."""
    for metric, label in METRICS.items():
        means, stds = pivot(part, metric)
        yield metric, label, means, stds, best_cells(means, metric, decimals)


def markdown_report(frame: pd.DataFrame) -> str:
    parts = ["# Results\n",
             "ACC, ASR and RA in percent on the test set; DER = (max(0, ΔASR) − max(0, ΔACC) + 100) / 2 "
             "against the undefended model; seconds = wall time of the defense itself. "
             "Mean ± std over the runs (training seeds × defense seeds) where there are several. "
             "**Bold**: the best defense of each row (highest ACC, RA, DER; lowest ASR); "
             "— = left out by study.skip.\n"]
    for (dataset, model, budget), part in _groups(frame):
        parts.append(f"\n## {dataset} · {model} · clean budget {budget}\n")
        for _, label, means, stds, best in per_metric(part, 2):
            cells = pd.DataFrame({d: [("**{}**" if best.at[a, d] else "{}").format(
                _cell(means.at[a, d], stds.at[a, d], 2, "md")) for a in means.index] for d in means.columns},
                index=means.index)
            parts.append(f"\n{label} (%) per attack (rows) and defense (columns):\n")
            parts.append(_markdown(cells.rename_axis("attack").reset_index()))
        parts.append("\n\nEvery run, mean ± std over seeds:\n")
        summ = summary(part)
        parts.append(_markdown(summ[["attack", "defense", "ACC", "ASR", "RA", "DER", "seconds", "runs"]]))
        parts.append("")
    return "\n".join(parts) + "\n"


def _tex(text: str) -> str:
    return str(text).replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


def latex_table(part: pd.DataFrame, caption: str, label: str) -> str:
    """One booktabs table: a panel per metric (ACC, ASR, RA, DER), one row per attack, a column per
    defense, best of each row in bold. Needs \\usepackage{booktabs,graphicx}."""
    defenses = defense_order(part)
    lines = [r"\begin{table*}[t]", r"\centering", r"\caption{" + _tex(caption) + "}", r"\label{" + label + "}",
             r"\resizebox{\textwidth}{!}{%", r"\begin{tabular}{l" + "c" * len(defenses) + "}", r"\toprule",
             "attack & " + " & ".join(_tex(d) for d in defenses) + r" \\"]
    for metric, label_m, means, stds, best in per_metric(part, 1):
        arrow = r"$\uparrow$" if HIGHER_IS_BETTER[metric] else r"$\downarrow$"
        lines += [r"\midrule", rf"\multicolumn{{{len(defenses) + 1}}}{{l}}{{\textit{{{label_m} (\%) {arrow}}}}} \\"]
        for attack in means.index:
            cells = []
            for d in defenses:
                cell = _cell(means.at[attack, d], stds.at[attack, d], 1, "tex")
                cells.append(r"\textbf{" + cell + "}" if best.at[attack, d] else cell)
            lines.append(_tex(attack) + " & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table*}", ""]
    return "\n".join(lines)


def latex_tables(frame: pd.DataFrame) -> dict[str, str]:
    """``{group_name: table}`` for every (dataset, model, clean budget) of the study."""
    out = {}
    for (dataset, model, budget), part in _groups(frame):
        runs = part.groupby(["seed", "defense_seed"]).ngroups
        seeds = ", ".join(map(str, part["seed"].unique()))
        dseeds = ", ".join(map(str, part["defense_seed"].unique()))
        caption = (f"{dataset}, {model}, clean budget {budget}: mean $\\pm$ std over {runs} run(s) "
                   f"(training seeds {seeds}; defense seeds {dseeds}). Bold: best defense of the row; "
                   f"-- = not run (study.skip).")
        name = group_name(dataset, model, budget)
        out[name] = latex_table(part, caption, f"tab:{name}")
    return out


def backdoor_attacks(frame: pd.DataFrame, benign=("benign",)) -> list[str]:
    return [a for a in frame["attack"].unique() if a not in benign]


def common_attacks(part: pd.DataFrame, benign=("benign",)) -> list[str]:
    """The backdoor attacks every defense of ``part`` ran (study.skip may leave some out)."""
    runs = part.groupby("defense", sort=False)["attack"].agg(set)
    shared = set.intersection(*runs) if len(runs) else set()
    return [a for a in backdoor_attacks(part, benign) if a in shared]


def runtime_effect(frame: pd.DataFrame, benign=("benign",)) -> pd.DataFrame:
    """Per group and defense: seconds per purification (mean, std over runs) and mean ACC / ASR after,
    over the backdoor attacks every defense ran; ``attacks`` names them."""
    rows = []
    for (dataset, model, budget), part in _groups(frame):
        attacks = common_attacks(part, benign)
        sub = part[part["attack"].isin(attacks)]
        for defense, runs in sub.groupby("defense", sort=False):
            rows.append(dict(dataset=dataset, model=model, clean_budget=budget, defense=defense,
                             runtime_s=runs["runtime_s"].mean(), runtime_std=runs["runtime_s"].std(ddof=1),
                             asr=runs["asr"].mean(), acc=runs["acc"].mean(), der=runs["der"].mean(),
                             runs=len(runs), attacks=" ".join(attacks)))
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
    import html

    parts = ["<html><head><meta charset='utf-8'><style>body{font-family:sans-serif;font-size:13px}"
             "table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #ccc;padding:2px 6px;"
             "text-align:right}th{background:#eee}td:first-child{text-align:left}</style></head><body>",
             "<p>ACC, ASR, RA and DER in percent; mean ± std over runs; <b>bold</b>: best defense of the row "
             "(highest ACC, RA, DER; lowest ASR; the undefended model is not a candidate); — = not run "
             "(study.skip).</p>"]
    for (dataset, model, budget), part in _groups(frame):
        parts.append(f"<h2>{html.escape(f'{dataset} · {model} · clean budget {budget}')}</h2>")
        for _, label, means, stds, best in per_metric(part, 2):
            rows = ["<tr><th>attack</th>" + "".join(f"<th>{html.escape(str(d))}</th>" for d in means.columns) + "</tr>"]
            for a in means.index:
                cells = []
                for d in means.columns:
                    text = html.escape(_cell(means.at[a, d], stds.at[a, d], 2, "md"))
                    cells.append(f"<td><b>{text}</b></td>" if best.at[a, d] else f"<td>{text}</td>")
                rows.append(f"<tr><td>{html.escape(str(a))}</td>" + "".join(cells) + "</tr>")
            parts.append(f"<h3>{label} (%)</h3><table>" + "".join(rows) + "</table>")
    return "\n".join(parts + ["</body></html>"]) + "\n"
