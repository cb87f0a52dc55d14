"""Figures from results/metrics.csv and the stored penultimate features, sized for print.

Widths are a paper's: ``SINGLE`` (one column, 3.3 in) and ``DOUBLE`` (7 in), with 6–8 pt text, so
a figure included at its natural size is legible. Every function returns a matplotlib figure;
``save`` writes it (png at 300 dpi, svg, pdf) atomically.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
matplotlib.rcParams["svg.hashsalt"] = "backdoor"  # fixed SVG element ids: equal figures, equal bytes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from . import stats, tables  # noqa: E402
from .io import atomic_path  # noqa: E402

SINGLE, DOUBLE = 3.3, 7.0  # inches
STYLE = {"font.size": 7, "axes.titlesize": 7.5, "axes.labelsize": 7, "xtick.labelsize": 6.5,
         "ytick.labelsize": 6.5, "legend.fontsize": 6.5, "legend.title_fontsize": 6.5, "axes.linewidth": 0.6,
         "lines.linewidth": 1.0, "lines.markersize": 4, "svg.fonttype": "none", "pdf.fonttype": 42}
KNOB_LABELS = {"eta_f": r"$\eta_F$", "floor_alpha": "mask floor α", "prune_ratio": "prune ratio", "u": "u", "lr": "lr"}
BENIGN = ("benign",)


def _style():
    return plt.rc_context(STYLE)


# No timestamps in the files, so a rerun gives the same bytes (PNG carries none by default).
_NO_DATE = {".svg": {"Date": None}, ".pdf": {"CreationDate": None}}


def save(fig, paths) -> None:
    for path in map(Path, paths):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip("."), dpi=300, bbox_inches="tight", pad_inches=0.02,
                        metadata=_NO_DATE.get(path.suffix))
    plt.close(fig)


def _groups(frame: pd.DataFrame):
    return list(frame.groupby(tables.GROUP, sort=False))


def _group_title(dataset, model, budget) -> str:
    return f"{dataset} · {model} · {budget} clean images"


def _colors(names) -> dict:
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


# -- main heatmaps -------------------------------------------------------------------------------

def _heatmap(ax, table: pd.DataFrame, cmap, norm, fmt: str, dark, intervals=None) -> object:
    """Cells coloured by ``table``; the mean in each, and below it ``intervals[(row, col)]`` when given."""
    values = table.to_numpy(dtype=float)
    image = ax.imshow(values, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(table.shape[1]), table.columns, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(table.shape[0]), table.index)
    ax.set_facecolor("0.85")  # cells not in the study (study.skip) stay grey and say so
    ax.tick_params(length=0)
    small = 6 if table.shape[1] <= 16 else 5
    for (i, j), v in np.ndenumerate(values):
        if np.isnan(v):
            ax.text(j, i, "—", ha="center", va="center", fontsize=small, color="0.45")
            continue
        color = "white" if dark(v) else "black"
        iv = intervals.get((table.index[i], table.columns[j])) if intervals else None
        if iv is not None and iv.has_interval:
            ax.text(j, i - 0.13, format(v, fmt), ha="center", va="center", fontsize=small, color=color)
            ax.text(j, i + 0.22, f"[{format(iv.lo, fmt)}, {format(iv.hi, fmt)}]", ha="center", va="center",
                    fontsize=small - 1.8, color=color)
        else:
            ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=small, color=color)
    return image


def heatmap_figure(frame: pd.DataFrame):
    """ΔACC against the undefended model (diverging, 0 = white) and ASR (0–100) per attack and
    defense: the mean over runs and, below it, its 95% bootstrap interval."""
    groups = _groups(frame)
    n_att, n_def = frame["attack"].nunique(), frame["defense"].nunique()
    panel_h = 0.65 + 0.3 * n_att
    width = DOUBLE if n_def <= 16 else DOUBLE * n_def / 16
    with _style():
        fig, axes = plt.subplots(2 * len(groups), 1, figsize=(width, (2 * panel_h + 0.5) * len(groups)),
                                 squeeze=False, layout="constrained")
        for g, ((dataset, model, budget), part) in enumerate(groups):
            part = part.assign(dacc=part["acc"] - part["acc_before"])
            drop, _ = tables.pivot(part, "dacc")
            asr, _ = tables.pivot(part, "asr")
            n = tables.run_count(part)
            runs = f"mean [95% interval] over {n} runs" if n is not None else "mean [95% interval] over runs"
            limit = max(1.0, float(np.ceil(np.nanmax(np.abs(drop.to_numpy(dtype=float))))))
            ax = axes[2 * g, 0]
            img = _heatmap(ax, drop, "RdBu", TwoSlopeNorm(0, -limit, limit), "+.1f", lambda v: abs(v) > 0.6 * limit,
                           stats.cell_intervals(part, "dacc"))
            fig.colorbar(img, ax=ax, fraction=0.03, pad=0.01, aspect=8).set_label("ΔACC (points)")
            ax.set_title(f"ACC change against the undefended model (points) — {_group_title(dataset, model, budget)}"
                         f"\n{runs}", loc="left")
            ax.set_xticklabels([])
            ax = axes[2 * g + 1, 0]
            img = _heatmap(ax, asr, "Reds", plt.Normalize(0, 100), ".1f", lambda v: v > 60,
                           stats.cell_intervals(part, "asr"))
            fig.colorbar(img, ax=ax, fraction=0.03, pad=0.01, aspect=8).set_label("ASR (%)")
            ax.set_title(f"attack success rate after purification, ASR (%); {runs}", loc="left")
            ax.set_xlabel("defense")
            for a in (axes[2 * g, 0], axes[2 * g + 1, 0]):
                a.set_ylabel("attack")
    return fig


# -- labels that do not overlap --------------------------------------------------------------------

OFFSETS = [(5, 2), (5, -7), (-5, 2), (-5, -7), (0, 6), (0, -10)] + [
    (round(r * np.cos(a)), round(r * np.sin(a)) - 3) for r in (12, 20, 30, 42, 56) for a in np.linspace(0, 2 * np.pi, 12, endpoint=False)]


def place_labels(ax, xs, ys, texts, fontsize=6) -> list:
    """Annotate points, trying offsets until a label overlaps neither an earlier label nor a marker
    nor leaves the axes (far ones get a leader line); returns the text artists."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axbox = ax.get_window_extent(renderer)
    points = [ax.transData.transform((x, y)) for x, y in zip(xs, ys)]
    pad = 3.5 * fig.dpi / 72  # a marker's radius, in pixels
    gap = 1.0 * fig.dpi / 72  # 1 pt of white around every label: short ones must not abut
    taken = [t.get_window_extent(renderer).padded(gap) for t in ax.texts]  # labels already there
    artists = []
    for (x, y), text in zip(zip(xs, ys), texts):
        chosen = None
        for dx, dy in OFFSETS:
            ha = "left" if dx > 0 else "right" if dx < 0 else "center"
            far = abs(dx) + abs(dy) > 14
            art = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                              ha=ha, va="bottom",
                              arrowprops=dict(arrowstyle="-", lw=0.4, color="0.5", shrinkA=0, shrinkB=2) if far else None)
            art.update_positions(renderer)
            box = Text.get_window_extent(art, renderer).padded(gap)  # the text, not its leader line
            clash = (any(box.overlaps(b) for b in taken)
                     or any(box.x0 - pad < px < box.x1 + pad and box.y0 - pad < py < box.y1 + pad for px, py in points)
                     or box.x0 < axbox.x0 or box.x1 > axbox.x1 or box.y0 < axbox.y0 or box.y1 > axbox.y1)
            if not clash:
                chosen = (art, box)
                break
            art.remove()
        if chosen is None:  # nothing free: the first offset
            art = ax.annotate(text, (x, y), xytext=OFFSETS[0], textcoords="offset points", fontsize=fontsize)
            chosen = (art, art.get_window_extent(renderer))
        taken.append(chosen[1])
        artists.append(chosen[0])
    return artists


# -- runtime against effectiveness -----------------------------------------------------------------

def runtime_figure(frame: pd.DataFrame, benign=BENIGN):
    """Seconds per purification (mean ± std, log x) against mean ASR after (95% stratified interval),
    one point per defense."""
    effect = tables.runtime_effect(frame, benign)
    groups = list(effect.groupby(tables.GROUP, sort=False))
    with _style():
        cols = min(2, len(groups))
        rows = -(-len(groups) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(SINGLE * cols + 0.2 * (cols - 1), 2.7 * rows), squeeze=False)
        for ax in axes.flat[len(groups):]:
            ax.axis("off")
        labels = []
        for ax, ((dataset, model, budget), part) in zip(axes.flat, groups):
            none = part[part["defense"] == tables.UNDEFENDED]
            part = part[(part["defense"] != tables.UNDEFENDED) & (part["runtime_s"] > 0)]
            colors = _colors(list(part["defense"]))
            for row in part.itertuples(index=False):
                err = 0 if np.isnan(row.runtime_std) else row.runtime_std
                lower = min(err, row.runtime_s * 0.95)  # log axis: keep the bar above 0
                yerr = None if np.isnan(row.asr_lo) else [[row.asr - row.asr_lo], [row.asr_hi - row.asr]]
                ax.errorbar(row.runtime_s, row.asr, xerr=[[lower], [err]], yerr=yerr, fmt="o",
                            color=colors[row.defense], ms=4, capsize=2, elinewidth=0.7, mec="black", mew=0.4)
            if not none.empty:
                ax.axhline(none["asr"].iloc[0], color="0.4", ls="--", lw=0.7)
                ax.text(0.99, none["asr"].iloc[0], "undefended", transform=ax.get_yaxis_transform(),
                        ha="right", va="bottom", fontsize=6, color="0.3")
            ax.set_xscale("log")
            ax.set_ylim(-4, 109)
            lo, hi = part["runtime_s"].min(), part["runtime_s"].max()
            ax.set_xlim(lo / 3, hi * 4)  # room for the labels
            ax.set_xlabel("purification wall time (s, log scale; mean ± std)")
            ax.set_ylabel("ASR after purification (%), mean and 95% interval")
            attacks = part["attacks"].iloc[0] if len(part) else ""
            runs = int(part["runs"].min()) if len(part) else 0
            ax.set_title(f"{_group_title(dataset, model, budget)}\nASR: mean over {attacks.replace(' ', ', ')}"
                         f" ({runs} runs in all)", fontsize=6.5)
            ax.grid(True, which="major", lw=0.3, alpha=0.5)
            labels.append((ax, part))
        fig.tight_layout()  # before the labels: they are placed in the final geometry
        for ax, part in labels:
            place_labels(ax, list(part["runtime_s"]), list(part["asr"]), list(part["defense"]))
    return fig


# -- sample efficiency -----------------------------------------------------------------------------

def sample_efficiency_figure(frame: pd.DataFrame, attacks, defenses):
    """ASR and ACC against the clean budget (log x), a line per defense, error bars = std over runs."""
    stats = tables.sample_efficiency(frame, attacks, defenses)
    panels = list(stats.groupby(["dataset", "model", "attack"], sort=False))
    undefended = frame[frame["defense"] == tables.UNDEFENDED].groupby(["dataset", "model", "attack"])[["acc", "asr"]].mean()
    budgets = sorted(stats["clean_budget"].unique())
    colors = _colors([d for d in defenses if d in set(stats["defense"])])
    with _style():
        fig, axes = plt.subplots(2, len(panels), figsize=(DOUBLE, 4.0), squeeze=False, sharex=True)
        for col, ((dataset, model, attack), part) in enumerate(panels):
            for row, (metric, label) in enumerate([("asr", "ASR (%)"), ("acc", "ACC (%)")]):
                ax = axes[row, col]
                for defense, curve in part.groupby("defense", sort=False):
                    ax.errorbar(curve["clean_budget"], curve[metric], yerr=curve[f"{metric}_std"].fillna(0),
                                color=colors[defense], marker="o", ms=3, capsize=2, elinewidth=0.7, label=defense)
                if (dataset, model, attack) in undefended.index:
                    ax.axhline(undefended.loc[(dataset, model, attack), metric], color="0.4", ls="--", lw=0.7,
                               label="undefended")
                ax.set_xscale("log")
                ax.set_xticks(budgets, [str(b) for b in budgets])
                ax.minorticks_off()
                ax.grid(True, lw=0.3, alpha=0.5)
                if row == 0:
                    ax.set_title(f"{attack} ({dataset} · {model})")
                    ax.set_ylim(-4, 104)
                else:
                    ax.set_xlabel("clean images given to the defense (log scale)")
                if col == 0:
                    ax.set_ylabel(label)
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(8, len(labels)), frameon=False,
                   bbox_to_anchor=(0.5, 1.0))
        fig.tight_layout()
    return fig


# -- trade-off frontiers ---------------------------------------------------------------------------

def _value(v: float) -> str:
    return f"{v:g}"


def tradeoff_figure(points: pd.DataFrame):
    """ASR against ACC as each method's knob sweeps: a curve per method, the study's value starred.
    A panel per attack on which some method was swept (two or more values)."""
    keys = ["dataset", "model", "clean_budget", "attack"]
    swept = points.groupby(keys + ["method"], sort=False)["value"].nunique().groupby(keys, sort=False).max()
    panels = [(key, points.set_index(keys).loc[key].reset_index()) for key in swept[swept > 1].index]
    methods = list(points["method"].unique())
    colors = _colors(methods)
    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    with _style():
        fig, axes = plt.subplots(rows, cols, figsize=(DOUBLE, 2.9 * rows + 0.4), squeeze=False, layout="constrained")
        for ax in axes.flat[len(panels):]:
            ax.axis("off")
        for ax, ((dataset, model, budget, attack), part) in zip(axes.flat, panels):
            for method in methods:
                curve = part[part["method"] == method].sort_values("value")
                if curve.empty:
                    continue
                knob = KNOB_LABELS.get(curve["knob"].iloc[0], curve["knob"].iloc[0])
                values = curve["value"]
                ax.plot(curve["acc"], curve["asr"], "-o", color=colors[method], ms=3,
                        label=f"{method} ({knob} {_value(values.min())} → {_value(values.max())})")
                ax.plot(curve["acc"].iloc[:1], curve["asr"].iloc[:1], "o", color="white", mec=colors[method], ms=3)
                star = curve[curve["study"]]
                ax.plot(star["acc"], star["asr"], "*", color=colors[method], ms=9, mec="black", mew=0.5)
            ax.set_xlabel("ACC after purification (%)")
            ax.set_ylabel("ASR after purification (%)")
            ax.set_ylim(-4, 104)
            ax.grid(True, lw=0.3, alpha=0.5)
            ax.set_title(f"{attack} ({dataset} · {model} · {budget} clean)")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        handles += [plt.Line2D([], [], ls="", marker="o", color="white", mec="0.3", ms=3),
                    plt.Line2D([], [], ls="", marker="*", color="white", mec="black", ms=8)]
        labels += ["smallest value (hollow)", "the study's value"]
        fig.legend(handles, labels, loc="outside upper center", ncol=3, frameon=False,
                   title="method (knob: smallest → largest value)")
    return fig


# -- smoothness -----------------------------------------------------------------------------------

SMOOTHNESS = {"lambda_max": r"largest Hessian eigenvalue $\lambda_{\max}$", "trace_h": "Hessian trace Tr(H)"}


def has_smoothness(frame: pd.DataFrame) -> bool:
    return all(c in frame.columns for c in SMOOTHNESS) and frame[list(SMOOTHNESS)].notna().any().all()


def smoothness_figure(frame: pd.DataFrame, methods, benign=BENIGN):
    """λ_max and Tr(H) per attack (log y): the backdoored model and each seed method's purified one;
    a dashed line for the benign model. Without measurements, a figure that says so."""
    with _style():
        if not has_smoothness(frame):
            fig, ax = plt.subplots(figsize=(SINGLE, 0.8))
            ax.axis("off")
            ax.text(0.5, 0.5, "No smoothness measurements: metrics.csv has no values in\n"
                    "lambda_max / trace_h, so this figure is left empty.", ha="center", va="center", fontsize=7)
            return fig
        (dataset, model, budget), part = _groups(frame)[0]
        attacks = tables.backdoor_attacks(part, benign)
        bars = [tables.UNDEFENDED] + [m for m in methods if m in set(part["defense"])]
        colors = dict(zip(bars, ["0.25"] + [plt.get_cmap("tab10")(i) for i in range(len(bars) - 1)]))
        means = part.groupby(["attack", "defense"])[list(SMOOTHNESS)].mean()
        fig, axes = plt.subplots(2, 1, figsize=(DOUBLE, 4.0), sharex=True)
        width = 0.8 / len(bars)
        for ax, (col, label) in zip(axes, SMOOTHNESS.items()):
            for k, defense in enumerate(bars):
                vals = [means[col].get((a, defense), np.nan) for a in attacks]
                ax.bar(np.arange(len(attacks)) + (k - (len(bars) - 1) / 2) * width, vals, width, color=colors[defense],
                       label="backdoored (no defense)" if defense == tables.UNDEFENDED else defense)
            clean = [means[col].get((b, tables.UNDEFENDED), np.nan) for b in benign]
            if clean and not np.isnan(clean[0]):
                ax.axhline(clean[0], color="black", ls="--", lw=0.8, label="benign model")
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_ylabel(f"{label}\n(log scale)")
            ax.grid(True, axis="y", which="major", lw=0.3, alpha=0.5)
        axes[-1].set_xticks(range(len(attacks)), attacks)
        axes[-1].set_xlabel("attack")
        axes[0].set_title(f"Sharpness of the loss at the model's weights — {_group_title(dataset, model, budget)}",
                          loc="left")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(7, len(labels)), frameon=False,
                   bbox_to_anchor=(0.5, 1.0))
        fig.tight_layout()
    return fig


# -- comparisons across attacks: aggregate, improvement over the control, ranks --------------------

AGGREGATES = {"der": "DER ↑ (IQM)", "asr": "ASR ↓ (IQM, %)", "dacc": "ΔACC ↑ (IQM, points)"}


def _empty(text: str):
    fig, ax = plt.subplots(figsize=(SINGLE, 0.8))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=7)
    return fig


def aggregate_figure(frame: pd.DataFrame, benign=BENIGN):
    """Per defense, the interquartile mean over runs × attacks of DER, ASR and ΔACC with its
    stratified-bootstrap 95% interval; defenses sorted by DER."""
    groups = _groups(frame)
    with _style():
        n_def = frame["defense"].nunique()
        fig, axes = plt.subplots(len(groups), 3, figsize=(DOUBLE, (0.6 + 0.17 * n_def) * len(groups) + 0.3),
                                 squeeze=False, sharey="row")
        for g, ((dataset, model, budget), part) in enumerate(groups):
            agg = stats.aggregate(part, benign).sort_values("der", ascending=True, kind="stable")
            y = np.arange(len(agg))
            for ax, (metric, label) in zip(axes[g], AGGREGATES.items()):
                lo = (agg[metric] - agg[f"{metric}_lo"]).fillna(0).clip(lower=0)
                hi = (agg[f"{metric}_hi"] - agg[metric]).fillna(0).clip(lower=0)
                colors = ["0.45" if d == tables.UNDEFENDED else "C3" if d == stats.CONTROL else "C0"
                          for d in agg["defense"]]
                ax.errorbar(agg[metric], y, xerr=[lo, hi], fmt="none", ecolor="0.3", elinewidth=0.8, capsize=2)
                ax.scatter(agg[metric], y, c=colors, s=14, zorder=3, edgecolors="black", linewidths=0.4)
                ax.set_yticks(y, agg["defense"])
                ax.set_xlabel(label)
                ax.grid(True, axis="x", lw=0.3, alpha=0.5)
            attacks = ", ".join(agg["attacks"].iloc[0].split()) if len(agg) else ""
            runs = int(agg["runs"].min()) if len(agg) else 0
            axes[g, 1].set_title(f"{_group_title(dataset, model, budget)}: interquartile mean over {runs} runs × "
                                 f"attacks ({attacks})\nbars: stratified-bootstrap 95% intervals; grey: undefended, "
                                 f"red: the control ({stats.CONTROL})", fontsize=6.5)
        fig.tight_layout()
    return fig


def improvement_figure(frame: pd.DataFrame, benign=BENIGN):
    """P(a defense's DER beats the control's on a paired run) with its stratified 95% interval."""
    groups = _groups(frame)
    tables_ = [(key, stats.improvement(part, benign=benign)) for key, part in groups]
    tables_ = [(k, t) for k, t in tables_ if len(t)]
    with _style():
        if not tables_:
            return _empty(f"No control ({stats.CONTROL}) in the study: no probability of improvement.")
        n_def = max(len(t) for _, t in tables_)
        fig, axes = plt.subplots(len(tables_), 1, figsize=(SINGLE + 0.6, (0.5 + 0.17 * n_def) * len(tables_) + 0.3),
                                 squeeze=False)
        for ax, ((dataset, model, budget), imp) in zip(axes[:, 0], tables_):
            imp = imp.sort_values("p", kind="stable")
            y = np.arange(len(imp))
            lo = (imp["p"] - imp["p_lo"]).fillna(0).clip(lower=0)
            hi = (imp["p_hi"] - imp["p"]).fillna(0).clip(lower=0)
            colors = ["C2" if s and p > 0.5 else "C3" if s else "0.55" for s, p in zip(imp["supported"], imp["p"])]
            ax.axvline(0.5, color="0.4", ls="--", lw=0.7)
            ax.errorbar(imp["p"], y, xerr=[lo, hi], fmt="none", ecolor="0.3", elinewidth=0.8, capsize=2)
            ax.scatter(imp["p"], y, c=colors, s=14, zorder=3, edgecolors="black", linewidths=0.4)
            ax.set_yticks(y, imp["defense"])
            ax.set_xlim(-0.02, 1.02)
            ax.set_xlabel(f"P(DER beats {stats.CONTROL} on a paired run)")
            ax.grid(True, axis="x", lw=0.3, alpha=0.5)
            ax.set_title(f"{_group_title(dataset, model, budget)}: {int(imp['runs'].max())} paired runs × "
                         f"{len(imp['attacks'].iloc[0].split())} attacks\ngreen/red: interval excludes ½; grey: "
                         "not separable", loc="left", fontsize=6.5)
        fig.tight_layout()
    return fig


def rank_figure(frame: pd.DataFrame, benign=BENIGN):
    """Critical-difference diagram of the mean DER ranks (1 = best); a bar joins defenses whose
    pairwise Wilcoxon test (Holm-corrected) does not separate them at 0.05."""
    import scikit_posthocs as sp

    groups = [(key, stats.ranking(part, benign=benign)) for key, part in _groups(frame)]
    groups = [(k, r) for k, r in groups if r is not None]
    with _style():
        if not groups:
            return _empty("Fewer than 3 defenses or 2 blocks: no ranking.")
        fig, axes = plt.subplots(len(groups), 1, figsize=(DOUBLE, 1.9 * len(groups)), squeeze=False)
        for ax, ((dataset, model, budget), rank) in zip(axes[:, 0], groups):
            sig = rank.pairwise_p.fillna(1.0)
            sp.critical_difference_diagram(rank.mean_ranks, sig, ax=ax, alpha=0.05,
                                           label_props={"fontsize": 6.5},
                                           crossbar_props={"color": "0.2", "linewidth": 1.5})
            ax.set_title(f"{_group_title(dataset, model, budget)}: mean rank by DER over {rank.blocks} blocks "
                         f"(attack × run), 1 = best; Friedman p = {rank.friedman_p:.2g}\nbars join defenses "
                         "not separated by pairwise Wilcoxon signed-rank tests (Holm-corrected, 0.05)",
                         loc="left", fontsize=6.5)
        fig.tight_layout()
    return fig


# -- t-SNE of penultimate features ----------------------------------------------------------------

def tsne_figure(embeddings: dict, title: str):
    """``embeddings``: {panel title: dict(clean=(n, 2), clean_y, triggered=(m, 2), asr)} in panel order.
    Clean test images coloured by class, triggered ones as black crosses."""
    n = len(embeddings)
    cols = min(3, n)
    rows = int(np.ceil(n / cols))
    with _style():
        fig, axes = plt.subplots(rows, cols, figsize=(DOUBLE, 2.2 * rows + 0.5), squeeze=False, layout="constrained")
        for ax in axes.flat[n:]:
            ax.axis("off")
        cmap = plt.get_cmap("tab10")
        for ax, (name, e) in zip(axes.flat, embeddings.items()):
            classes = np.asarray(e["clean_y"])
            ax.scatter(e["clean"][:, 0], e["clean"][:, 1], c=cmap(classes % 10), s=2.5, lw=0, alpha=0.8,
                       rasterized=True)
            ax.scatter(e["triggered"][:, 0], e["triggered"][:, 1], marker="x", c="black", s=3, lw=0.3, alpha=0.6,
                       rasterized=True)
            ax.set_title(f"{name}: {e['asr']:.0f}% of triggered → target", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        num = int(max(np.max(e["clean_y"]) for e in embeddings.values())) + 1
        handles = [plt.Line2D([], [], ls="", marker="o", ms=3.5, color=cmap(c % 10), label=f"class {c}")
                   for c in range(num)]
        handles.append(plt.Line2D([], [], ls="", marker="x", ms=4, color="black", label="triggered"))
        fig.legend(handles=handles, loc="outside upper center", ncol=len(handles), frameon=False,
                   handletextpad=0.1, columnspacing=0.8, title=title, title_fontproperties={"size": 7.5})
    return fig


# -- dynamics: checkpoints along training and purification (FIP's Fig. 1 and 3) --------------------

DYN_PANELS = {"lambda_max": "λ_max (symlog)", "trace_h": "Tr(H) (symlog)", "acc": "ACC (%)", "asr": "ASR (%)"}


def _symlog_steps(ax, xlabel: str) -> None:
    ax.set_xscale("symlog", linthresh=1, linscale=0.4)
    ax.set_xlim(left=-0.15)  # steps are ≥ 0
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel(xlabel)
    ax.grid(True, which="major", lw=0.3, alpha=0.5)


def _dyn_line(ax, part: pd.DataFrame, col: str, color, label, **kw) -> None:
    ax.plot(part["step"], part[col], color=color, label=label, marker="o", ms=2, **kw)
    if (part["n"] > 1).any():  # a band over training seeds: their min and max
        ax.fill_between(part["step"], part[f"{col}_min"], part[f"{col}_max"], color=color, alpha=0.15, lw=0)


def _seeds_note(summary: pd.DataFrame) -> str:
    n = sorted(set(summary["n"]))
    return f"line: mean of {n[-1]} training seed{'s' if n[-1] > 1 else ''}, band: min–max" \
        if n[-1] > 1 else "one training seed (an example, not a result)"


def dynamics_training_figure(summary: pd.DataFrame):
    """λ_max, Tr(H), ACC and ASR against the training step (symlog), the benign model beside each
    attack's backdoored one (FIP's Fig. 1); dotted lines mark the epochs."""
    with _style():
        if summary.empty:
            return _empty("No training traces: figures.dynamics.attacks is empty.")
        attacks = list(dict.fromkeys(summary["attack"]))
        colors = {a: ("black" if a in BENIGN else c) for a, c in
                  zip(attacks, [plt.get_cmap("tab10")(i) for i in range(len(attacks))])}
        fig, axes = plt.subplots(1, 4, figsize=(DOUBLE, 2.1))
        per_epoch = (summary["step"] / summary["epoch"]).dropna()
        per_epoch = float(per_epoch[per_epoch > 0].iloc[0]) if (per_epoch > 0).any() else None
        for ax, (col, label) in zip(axes, DYN_PANELS.items()):
            for attack in attacks:
                _dyn_line(ax, summary[summary["attack"] == attack], col, colors[attack],
                          "benign (no trigger)" if attack in BENIGN else attack,
                          ls="--" if attack in BENIGN else "-")
            if per_epoch:
                for e in range(1, int(summary["epoch"].max()) + 1):
                    ax.axvline(e * per_epoch, color="0.6", ls=":", lw=0.6)
            if col in ("lambda_max", "trace_h"):  # ≈ 0 (even slightly negative) at initialisation
                ax.set_yscale("symlog", linthresh=1)
                ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            _symlog_steps(ax, "training step")
            ax.set_title(label, loc="left")
        handles, labels = axes[0].get_legend_handles_labels()
        dataset, model = summary["dataset"].iloc[0], summary["model"].iloc[0]
        fig.suptitle(f"Backdoor training — {dataset} · {model}; dotted: epochs; {_seeds_note(summary)}",
                     x=0.01, ha="left", fontsize=7.5)
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False, bbox_to_anchor=(0.5, -0.06))
        fig.tight_layout()
    return fig


def dynamics_purification_figure(summary: pd.DataFrame, training: pd.DataFrame | None = None):
    """λ_max, ASR and ACC against the purification step (symlog), a line per defense, a row per
    attack (FIP's Fig. 3); dashed: the benign model's final λ_max (from the training traces)."""
    with _style():
        if summary.empty:
            return _empty("No purification traces: figures.dynamics.attacks is empty.")
        attacks = list(dict.fromkeys(summary["attack"]))
        defenses = list(dict.fromkeys(summary["defense"]))
        colors = _colors(defenses)
        benign_lm = None
        if training is not None and not training.empty:
            ben = training[training["attack"].isin(BENIGN)]
            if not ben.empty:
                benign_lm = float(ben.sort_values("step")["lambda_max"].iloc[-1])
        panels = {"lambda_max": "λ_max (log)", "asr": "ASR (%)", "acc": "ACC (%)"}
        fig, axes = plt.subplots(len(attacks), 3, figsize=(DOUBLE, 1.75 * len(attacks) + 0.4), squeeze=False)
        for row, attack in zip(axes, attacks):
            part = summary[summary["attack"] == attack]
            for ax, (col, label) in zip(row, panels.items()):
                for defense in defenses:
                    _dyn_line(ax, part[part["defense"] == defense], col, colors[defense], defense)
                if col == "lambda_max":
                    ax.set_yscale("log")
                    if benign_lm is not None:
                        ax.axhline(benign_lm, color="black", ls="--", lw=0.7, label="benign model (end of training)")
                _symlog_steps(ax, "purification step" if row is axes[-1] else "")
                ax.set_title(f"{attack}: {label}", loc="left")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.suptitle(f"Purification — {summary['dataset'].iloc[0]} · {summary['model'].iloc[0]}; step 0 is the "
                     f"backdoored model; {_seeds_note(summary)}", x=0.01, ha="left", fontsize=7.5)
        fig.legend(handles, labels, loc="lower center", ncol=min(8, len(labels)), frameon=False,
                   bbox_to_anchor=(0.5, -0.04))
        fig.tight_layout()
    return fig


# -- the re-tuning attack: does a purification last? ------------------------------------------------

def retune_figure(frame: pd.DataFrame, benign=BENIGN):
    """ASR after the defense (x) against ASR after the re-tuning attack (P-ASR, y), one panel per
    attack, a point per defense (mean, with 95% intervals); dashed: the benign model re-tuned the same
    way (the floor), dotted: y = x."""
    with _style():
        if "p_asr" not in frame or frame["p_asr"].isna().all():
            return _empty("No re-tuning measurements: analysis.retune.enabled is false.")
        (dataset, model, budget), part = _groups(frame)[0]
        attacks = tables.backdoor_attacks(part, benign)
        defenses = tables.defense_order(part)
        colors = _colors(defenses)
        cols = min(4, len(attacks))
        rows = -(-len(attacks) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(min(DOUBLE, 2.4 * cols + 0.6), 1.9 * rows + 0.8), squeeze=False,
                                 layout="constrained")
        for ax, attack in zip(axes.flat, attacks):
            runs = part[part["attack"] == attack]
            for d in defenses:
                cell = runs[runs["defense"] == d]
                if cell["p_asr"].notna().sum() == 0:
                    continue
                x, y = stats.interval(cell["asr"]), stats.interval(cell["p_asr"])
                ax.errorbar(x.mean, y.mean, xerr=[[x.mean - x.lo], [x.hi - x.mean]] if x.has_interval else None,
                            yerr=[[y.mean - y.lo], [y.hi - y.mean]] if y.has_interval else None, fmt="o",
                            color=colors[d], ms=3, lw=0.7, capsize=1.5, label=d)
            if runs["p_asr_floor"].notna().any():
                ax.axhline(runs["p_asr_floor"].mean(), color="black", ls="--", lw=0.7, label="benign model (floor)")
            ax.plot([0, 100], [0, 100], color="0.6", ls=":", lw=0.6)
            ax.set(xlim=(-3, 103), ylim=(-3, 103), title=attack)
            ax.grid(True, lw=0.3, alpha=0.5)
        for ax in axes.flat[len(attacks):]:
            ax.axis("off")
        for ax in axes[:, 0]:
            ax.set_ylabel("P-ASR after re-tuning (%)")
        for ax in axes[-1, :]:
            ax.set_xlabel("ASR after the defense (%)")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.suptitle(f"Does the purification last? — {_group_title(dataset, model, budget)}", x=0.01, ha="left",
                     fontsize=7.5)
        fig.legend(handles, labels, loc="outside lower center", ncol=min(10, len(labels)), frameon=False)
    return fig


# -- poisoning rates: ASR and P-ASR against the rate ---------------------------------------------------

CLEAN_LABEL_FAMILIES = ("sig", "lc")  # their ids' rate is the share of the target class (profiles/poison_rate.yaml)

def poison_rate_figure(frame: pd.DataFrame):
    """ASR (top) and P-ASR (bottom, when re-tuned) against the poisoning rate, a panel per attack family,
    a line per defense: mean over runs with 95% intervals; the x axis is categorical (0 = the benign
    model). Dashed black: the benign model re-tuned with that rate's images (the floor)."""
    summary = tables.poison_rate_summary(frame)
    with _style():
        if summary.empty:
            return _empty("No rate-swept attacks (ids <family>_r<rate>) in metrics.csv.")
        first = summary[["dataset", "model", "clean_budget"]].iloc[0]
        part = summary[(summary[["dataset", "model", "clean_budget"]] == first).all(axis=1)]
        families = list(part["family"].unique())
        defenses = tables.defense_order(part)
        colors = _colors([d for d in defenses if d != stats.UNDEFENDED])
        colors[stats.UNDEFENDED] = "0.45"
        metrics = [("asr", "ASR after the defense (%)")]
        if part["p_asr"].notna().any():
            metrics.append(("p_asr", "P-ASR after re-tuning (%)"))
        fig, axes = plt.subplots(len(metrics), len(families), figsize=(DOUBLE, 2.1 * len(metrics) + 0.7),
                                 squeeze=False, sharey=True)
        width = 0.5 / max(1, len(defenses))
        for j, family in enumerate(families):
            rates = sorted(part.loc[part["family"] == family, "rate"].unique())
            pos = {r: k for k, r in enumerate(rates)}
            for i, (metric, label) in enumerate(metrics):
                ax = axes[i][j]
                fam = part[part["family"] == family]
                for k, d in enumerate(defenses):
                    cell = fam[(fam["defense"] == d) & fam[metric].notna()].sort_values("rate")
                    if cell.empty:
                        continue
                    x = cell["rate"].map(pos).to_numpy() + (k - (len(defenses) - 1) / 2) * width
                    y = cell[metric].to_numpy()
                    err = np.vstack([y - cell[f"{metric}_lo"].fillna(cell[metric]),
                                     cell[f"{metric}_hi"].fillna(cell[metric]) - y])
                    ax.errorbar(x, y, yerr=err, fmt="o", color=colors[d], ms=2.5, lw=0.8, elinewidth=0.6,
                                capsize=1, ls="--" if d == stats.UNDEFENDED else "-", label=d)
                if metric == "p_asr":
                    floor = fam.groupby("rate", sort=True)["p_asr_floor"].mean().dropna()
                    if len(floor):
                        ax.plot(floor.index.map(pos), floor.to_numpy(), color="black", ls="--", lw=0.8,
                                marker="_", label="benign model re-tuned (floor)")
                ax.set_xticks(range(len(rates)), [f"{r:g}" for r in rates])
                ax.set(xlim=(-0.5, len(rates) - 0.5), ylim=(-4, 104))
                ax.grid(True, lw=0.3, alpha=0.5)
                if i == 0:
                    ax.set_title(family + (" (% of the target class)" if family in CLEAN_LABEL_FAMILIES else ""))
                if i == len(metrics) - 1:
                    ax.set_xlabel("poisoning rate (%)")
                if j == 0:
                    ax.set_ylabel(label)
        handles = {}
        for ax in axes.flat:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        fig.suptitle(f"ASR and P-ASR against the poisoning rate — {_group_title(*first)}\n"
                     f"mean over runs, 95% intervals; rate 0 = the benign model", x=0.01, ha="left", fontsize=7.5)
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(6, len(handles)),
                   frameon=False, bbox_to_anchor=(0.5, -0.07 if len(metrics) > 1 else -0.12))
        fig.tight_layout()
    return fig
