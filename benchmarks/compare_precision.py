"""Does bf16 change the science? Compare a bf16 study with an fp32 one, cell by cell.

    # two workspaces of the same study (e.g. make study on a CPU with bf16 units, `precision: auto`,
    # and on one without, or `precision: fp32` on the same one):
    python benchmarks/compare_precision.py --fp32 A/results/metrics.csv --bf16 B/results/metrics.csv

For each attack × defense cell and each of ACC / ASR / RA: the fp32 and the bf16 mean with their
95% intervals over runs (`backdoor.stats.interval`), and the paired difference bf16 − fp32 over the
runs both have (the same training seed: the same data, initial weights and clean draw, so only the
precision differs), with its interval. "inside" when the bf16 mean lies inside the fp32 interval;
"separable" when the paired difference's interval excludes 0. A single bf16 run is an example: it is
still placed against the fp32 interval, but its paired difference has no interval (never separable).
"""

from __future__ import annotations

import argparse

import pandas as pd

from backdoor import stats

METRICS = ["acc", "asr", "ra"]


def compare(fp32: pd.DataFrame, bf16: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (attack, defense), part in fp32.groupby(["attack", "defense"], sort=False):
        other = bf16[(bf16.attack == attack) & (bf16.defense == defense)]
        if other.empty:
            continue
        row = {"attack": attack, "defense": defense, "runs_fp32": len(part), "runs_bf16": len(other)}
        for m in METRICS:
            f, b = stats.interval(part[m]), stats.interval(other[m])
            d = stats.paired(stats.runs_of(other, m), stats.runs_of(part, m))
            row[f"{m}_fp32"], row[f"{m}_bf16"], row[f"{m}_diff"] = f, b, d
            row[f"{m}_inside"] = f.has_interval and f.lo <= b.mean <= f.hi
            row[f"{m}_separable"] = d.excludes(0.0)
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(i: stats.Interval) -> str:
    return f"{i.mean:.1f} [{i.lo:.1f}, {i.hi:.1f}]" if i.has_interval else f"{i.mean:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fp32", required=True)
    ap.add_argument("--bf16", required=True)
    ap.add_argument("--metric", choices=METRICS, action="append",
                    help="metrics to print (default: all three)")
    args = ap.parse_args()
    table = compare(pd.read_csv(args.fp32), pd.read_csv(args.bf16))
    for m in args.metric or METRICS:
        print(f"\n{m.upper()} (%): fp32 | bf16 | paired bf16 − fp32, mean [95% interval]\n")
        print("| attack | defense | runs | fp32 | bf16 | bf16 − fp32 | bf16 inside fp32 | separable |")
        print("|---|---|---|---|---|---|---|---|")
        for r in table.to_dict("records"):
            print(f"| {r['attack']} | {r['defense']} | {r['runs_fp32']} / {r['runs_bf16']} | "
                  f"{_fmt(r[m + '_fp32'])} | {_fmt(r[m + '_bf16'])} | {_fmt(r[m + '_diff'])} | "
                  f"{'yes' if r[m + '_inside'] else 'no'} | {'yes' if r[m + '_separable'] else 'no'} |")
        inside = int(table[f"{m}_inside"].sum())
        sep = int(table[f"{m}_separable"].sum())
        print(f"\n{m.upper()}: bf16 mean inside the fp32 interval in {inside} of {len(table)} cells; "
              f"paired difference separable from 0 in {sep}")


if __name__ == "__main__":
    main()
