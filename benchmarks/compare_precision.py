"""Does bf16 change the science? Compare a bf16 study with an fp32 one run over several training seeds.

    # two workspaces of the same study, one with precision: fp32 and study.seeds: [0, 1, 2],
    # the other with precision: bf16 and study.seeds: [0]:
    python benchmarks/compare_precision.py --fp32 A/results/metrics.csv --bf16 B/results/metrics.csv

For each attack × defense cell: ACC / ASR / RA of fp32 seed 0, of bf16 seed 0, their difference, and the
fp32 seed-to-seed spread (standard deviation and range over the training seeds). A difference is
"within spread" when it lies inside the fp32 seeds' range widened by nothing: min ≤ bf16 ≤ max, or
|bf16 − fp32| ≤ 2 std.
"""

from __future__ import annotations

import argparse

import pandas as pd

METRICS = ["acc", "asr", "ra"]


def compare(fp32: pd.DataFrame, bf16: pd.DataFrame) -> pd.DataFrame:
    keys = ["attack", "defense"]
    rows = []
    for (attack, defense), part in fp32.groupby(keys, sort=False):
        other = bf16[(bf16.attack == attack) & (bf16.defense == defense) & (bf16.seed == 0)]
        base = part[part.seed == 0]
        if other.empty or base.empty:
            continue
        row = {"attack": attack, "defense": defense, "seeds": len(part)}
        for m in METRICS:
            f, b = float(base[m].iloc[0]), float(other[m].iloc[0])
            std, lo, hi = part[m].std(ddof=1), part[m].min(), part[m].max()
            row[f"{m}_fp32"], row[f"{m}_bf16"], row[f"{m}_diff"] = f, b, b - f
            row[f"{m}_std"] = std
            row[f"{m}_within"] = bool(lo <= b <= hi or abs(b - f) <= 2 * std)
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fp32", required=True)
    ap.add_argument("--bf16", required=True)
    args = ap.parse_args()
    table = compare(pd.read_csv(args.fp32), pd.read_csv(args.bf16))
    print("| attack | defense | ACC fp32 / bf16 (fp32 std) | ASR fp32 / bf16 (fp32 std) | RA fp32 / bf16 (fp32 std) "
          "| within spread |\n|---|---|---|---|---|---|")
    for r in table.itertuples(index=False):
        r = r._asdict()
        cells = [f"{r[m + '_fp32']:.2f} / {r[m + '_bf16']:.2f} ({r[m + '_std']:.2f})" for m in METRICS]
        within = "yes" if all(r[m + "_within"] for m in METRICS) else \
            "no: " + ", ".join(m.upper() for m in METRICS if not r[m + "_within"])
        print(f"| {r['attack']} | {r['defense']} | {' | '.join(cells)} | {within} |")
    n = len(table)
    ok = sum(all(r[m + "_within"] for m in METRICS) for r in table.to_dict("records"))
    print(f"\n{ok} of {n} cells within the fp32 seed spread on all three metrics")


if __name__ == "__main__":
    main()
