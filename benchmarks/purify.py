"""Benchmark: run several defenses on one backdoored model and print ACC / ASR / RA / DER / seconds.

Not a test: timings vary with the machine. Example (after `make study` or `snakemake all`):

    python benchmarks/purify.py --dataset fashion_mnist --model cnn --attack badnets \
        --defenses none,ft,fip,fast_fip,nft,fmp,sibp

Defense settings come from params.yaml (``defenses.<id>`` over ``defense_defaults`` and the declared defaults);
``--override '{"fip": {"iterations": 500}}'`` changes them for this run only.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library, not an installed one
import argparse
import json

import torch
import yaml

from backdoor import params as P  # noqa: E402
from backdoor.device import autocast, resolve_precision
from backdoor.io import load_tensors
from backdoor.metrics import der, evaluate
from backdoor.models import load_checkpoint
from backdoor.steps import run_defense, test_sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--attack", default="badnets")
    ap.add_argument("--defenses", default="none,ft")
    ap.add_argument("--budget", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--override", default="{}", help="JSON: {defense_id: {key: value}}")
    ap.add_argument("--prepared", help="default: data/prepared/<dataset>.pt")
    ap.add_argument("--poisoned", help="default: data/poisoned/<dataset>/<attack>.pt")
    ap.add_argument("--checkpoint", help="default: results/models/<dataset>/<model>/<attack>/seed<seed>.pt")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the study's jobs use 1)")
    ap.add_argument("--precision", default=None, help="auto | fp32 | bf16 (default: params.yaml's)")
    ap.add_argument("--defense-seed", type=int, default=0, help="the clean draw and the defense's stream")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = yaml.safe_load(Path(args.params).read_text())
    overrides = json.loads(args.override)
    device = torch.device("cpu")
    precision = resolve_precision(args.precision or config.get("precision", "auto"), device)
    prepared = load_tensors(args.prepared or f"data/prepared/{args.dataset}.pt")
    poisoned = load_tensors(args.poisoned or f"data/poisoned/{args.dataset}/{args.attack}.pt")
    ckpt = args.checkpoint or f"results/models/{args.dataset}/{args.model}/{args.attack}/seed{args.seed}.pt"
    clean_test, triggered = test_sets(prepared, poisoned)
    arch = P.entry(config, "models", args.model).kind if args.model in config.get("models", {}) else None
    with autocast(precision, device):
        base = evaluate(load_checkpoint(ckpt, expect_arch=arch), clean_test, triggered)

    rows = []
    for defense_id in args.defenses.split(","):
        entry = {**config["defenses"].get(defense_id, {"type": defense_id}), **overrides.get(defense_id, {})}
        dparams = P.entry({**config, "defenses": {defense_id: entry}}, "defenses", defense_id).to_dict()
        model, _, _, seconds = run_defense(prepared, load_checkpoint(ckpt), defense_id, dparams, args.budget,
                                           args.seed, args.defense_seed, device, precision)
        with autocast(precision, device):
            scores = evaluate(model, clean_test, triggered)
        rows.append((defense_id, scores["acc"], scores["asr"], scores["ra"],
                     der(base["acc"], base["asr"], scores["acc"], scores["asr"]), seconds))
        print(f"{defense_id}: ACC {scores['acc']:.2f} ASR {scores['asr']:.2f} RA {scores['ra']:.2f} "
              f"({seconds:.1f} s)", flush=True)

    print(f"\n{args.dataset} / {args.model} / {args.attack}, clean budget {args.budget}, seed {args.seed}, "
          f"defense seed {args.defense_seed}, {precision}, {torch.get_num_threads()} thread(s)")
    print(f"backdoored model: ACC {base['acc']:.2f}  ASR {base['asr']:.2f}  RA {base['ra']:.2f}\n")
    print("| defense | ACC | ASR | RA | DER | seconds |\n|---|---|---|---|---|---|")
    for row in rows:
        print("| {} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {:.1f} |".format(*row))


if __name__ == "__main__":
    main()
