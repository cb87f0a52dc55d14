"""Figures from results/metrics.csv: ACC and ASR per attack and defense, and runtime per defense."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["svg.hashsalt"] = "backdoor"  # fixed SVG element ids: equal figures, equal bytes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .io import atomic_path  # noqa: E402


def _save(fig, paths) -> None:
    for path in paths:
        with atomic_path(path) as tmp:
            fmt = Path(path).suffix.lstrip(".")
            fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight",
                        metadata={"Date": None} if fmt == "svg" else None)  # no creation date
    plt.close(fig)


def _heatmap(ax, table: pd.DataFrame, title: str, cmap: str) -> None:
    values = table.to_numpy(dtype=float)
    image = ax.imshow(values, cmap=cmap, vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(table.shape[1]), table.columns, rotation=45, ha="right")
    ax.set_yticks(range(table.shape[0]), table.index)
    ax.set_xlabel("defense")
    ax.set_ylabel("attack")
    ax.set_title(title)
    ax.set_facecolor("0.92")  # cells not in the study (study.skip) stay grey and say so
    for (i, j), v in np.ndenumerate(values):
        if np.isnan(v):
            ax.text(j, i, "—", ha="center", va="center", fontsize=8, color="0.55")
        else:
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8,
                    color="white" if v > 60 else "black")  # both colour maps are dark at 100
    return image


def acc_asr_figure(frame: pd.DataFrame):
    groups = list(frame.groupby(["dataset", "model", "clean_budget"], sort=False))
    n_def = frame["defense"].nunique()
    n_att = frame["attack"].nunique()
    width = max(8.0, 2 * (1.2 + 0.55 * n_def))
    fig, axes = plt.subplots(len(groups), 2, figsize=(width, (1.6 + 0.45 * n_att) * len(groups)), squeeze=False)
    for row, ((dataset, model, budget), part) in enumerate(groups):
        means = part.groupby(["attack", "defense"], sort=False)[["acc", "asr"]].mean()
        order_a, order_d = part["attack"].unique(), part["defense"].unique()
        for col, (metric, label, cmap) in enumerate([("acc", "clean accuracy ACC (%)", "Blues"),
                                                    ("asr", "attack success rate ASR (%)", "Reds")]):
            table = means[metric].unstack("defense").reindex(index=order_a, columns=order_d)
            image = _heatmap(axes[row, col], table, f"{label}\n{dataset} · {model} · {budget} clean", cmap)
            fig.colorbar(image, ax=axes[row, col], fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def runtime_figure(frame: pd.DataFrame):
    stats = frame.groupby("defense", sort=False)["runtime_s"].agg(["mean", "min", "max"])
    stats = stats.iloc[::-1]  # first defense on top
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.4 * len(stats)))
    y = np.arange(len(stats))
    ax.barh(y, stats["mean"], color="tab:gray",
            xerr=[stats["mean"] - stats["min"], stats["max"] - stats["mean"]], capsize=3)
    ax.set_yticks(y, stats.index)
    ax.set_xlabel("wall time of the purify step (s), mean over attacks; bars: min–max")
    ax.set_ylabel("defense")
    ax.set_title("Runtime per defense")
    for yi, mean, top in zip(y, stats["mean"], stats["max"]):
        ax.text(top, yi, f"  {mean:.1f} s", va="center", fontsize=8)  # right of the error bar
    ax.set_xlim(0, max(1.0, float(stats["max"].max())) * 1.3)
    fig.tight_layout()
    return fig


def write_figures(csv_path: str | Path, out_paths) -> None:
    """``out_paths``: acc_asr.{png,svg} and runtime.{png,svg}, matched by file name."""
    frame = pd.read_csv(csv_path)
    by_name: dict[str, list[str]] = {}
    for path in map(str, out_paths):
        by_name.setdefault(Path(path).stem, []).append(path)
    makers = {"acc_asr": acc_asr_figure, "runtime": runtime_figure}
    for name, paths in by_name.items():
        if name not in makers:
            raise ValueError(f"no figure called {name!r}; known: {', '.join(makers)}")
        _save(makers[name](frame), paths)
