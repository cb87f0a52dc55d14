"""Why does the default study resist purification? Tables from the cause profile's outputs.

    snakemake --configfile profiles/cause.yaml --cores 2 all
    python benchmarks/cause.py [--metrics results/metrics.csv]

1. Where each trigger lands (``backdoor.analysis.trigger_overlap``) on the clean test images of each
   prepared dataset: the share of pixels it changes, the share of its change that falls on pixels
   that are 0 in the clean image, and the share of clean images with any nonzero pixel under it.
2. ASR (and ACC) after each defense, per dataset × model × attack, from metrics.csv.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library

import pandas as pd  # noqa: E402

from backdoor.analysis.trigger_overlap import clean_counterparts, trigger_overlap  # noqa: E402
from backdoor.io import load_tensors  # noqa: E402


def overlap_table(data_dir: Path) -> pd.DataFrame:
    rows = []
    for poisoned_path in sorted(data_dir.glob("poisoned/*/*.pt")):
        dataset, attack = poisoned_path.parent.name, poisoned_path.stem
        prepared = load_tensors(data_dir / "prepared" / f"{dataset}.pt")
        poisoned = load_tensors(poisoned_path)
        params = poisoned["params"]
        if params["type"] == "benign":
            continue
        clean = clean_counterparts(prepared["test_x"], prepared["test_y"], params.get("target", 0),
                                   bool(params.get("all_to_all", False)))
        rows.append({"dataset": dataset, "attack": attack, **trigger_overlap(clean, poisoned["test_x"])})
    return pd.DataFrame(rows)


def asr_table(metrics: Path) -> pd.DataFrame:
    frame = pd.read_csv(metrics)
    frame["cell"] = frame["acc"].map("{:.1f}".format) + " / " + frame["asr"].map("{:.1f}".format)
    table = frame.pivot_table(index=["dataset", "model", "attack"], columns="defense", values="cell",
                              aggfunc="first", sort=False)
    return table.reindex(columns=list(dict.fromkeys(frame["defense"]))).fillna("—")


def markdown(frame: pd.DataFrame, floats: str = "{:.3f}") -> str:
    frame = frame.reset_index() if frame.index.name or frame.index.names[0] else frame
    cells = [[floats.format(v) if isinstance(v, float) else str(v) for v in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data", help="the workspace's data/ folder")
    ap.add_argument("--metrics", default="results/metrics.csv")
    args = ap.parse_args()
    print("Where the triggers land (clean test images; shares in 0–1):\n")
    print(markdown(overlap_table(Path(args.data))))
    if Path(args.metrics).exists():
        print("\nACC / ASR after each defense:\n")
        print(markdown(asr_table(Path(args.metrics))))


if __name__ == "__main__":
    main()
