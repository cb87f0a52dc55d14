"""The statistics of the study's comparisons on constructed data with known answers."""

import math

import numpy as np
import pandas as pd

from backdoor import stats, tables

ATTACKS = ["badnets", "blend", "wanet", "sig"]


def frame(der: dict, runs=3, attacks=ATTACKS, noise=1.0, seed=0) -> pd.DataFrame:
    """metrics.csv rows: ``der[defense](attack, run, rng)`` gives each run's DER; ASR follows DER and
    ACC is constant, so every metric ranks the defenses alike."""
    rng = np.random.default_rng(seed)
    rows = []
    for attack in attacks:
        for run in range(runs):
            base = rng.normal(0, noise)  # a run effect shared by every defense of the run (paired)
            for defense, value in der.items():
                d = value(attack, run, rng) + base if defense != "none" else 50.0
                rows.append(dict(dataset="fashion_mnist", model="cnn", attack=attack, defense=defense,
                                 clean_budget=600, seed=run, defense_seed=0, acc=88.0, acc_before=90.0,
                                 asr=max(0.0, 200 - 2 * d), asr_before=99.0, ra=1.0, der=d, runtime_s=1.0))
    return pd.DataFrame(rows)


def const(v):
    return lambda attack, run, rng: v


def test_interval_of_identical_runs_is_a_point_and_one_run_has_none():
    assert stats.interval([3.0, 3.0, 3.0]) == stats.Interval(3.0, 3.0, 3.0, 3)
    one = stats.interval([7.0])
    assert one.mean == 7.0 and math.isnan(one.lo) and not one.has_interval and not one.excludes(0)
    iv = stats.interval([1.0, 2.0, 6.0, np.nan])
    assert iv.n == 3 and iv.lo <= iv.mean <= iv.hi and 1.0 <= iv.lo and iv.hi <= 6.0
    assert stats.interval([1.0, 2.0, 6.0]) == iv  # seeded: the same inputs give the same interval


def test_a_method_better_on_every_paired_run_is_best_and_beats_the_control():
    data = frame({"none": const(50), "ft": lambda a, r, g: 70 + g.normal(0, 0.5),
                  "fip": lambda a, r, g: 80 + g.normal(0, 0.5), "nft": lambda a, r, g: 60 + g.normal(0, 0.5)},
                 noise=8.0)  # a large run effect: unpaired intervals would overlap, paired ones do not
    marks = stats.row_marks(data, "der")
    assert {k: v for k, v in marks.items()} == {(a, "fip"): "best" for a in ATTACKS}
    assert {k for k, v in stats.row_marks(data, "asr").items() if v == "best"} == {(a, "fip") for a in ATTACKS}
    imp = stats.improvement(data).set_index("defense")
    assert imp.at["fip", "p"] == 1.0 and imp.at["fip", "p_lo"] == 1.0 and imp.at["fip", "supported"]
    assert imp.at["nft", "p"] == 0.0 and imp.at["nft", "supported"]
    rank = stats.ranking(data)
    assert rank.mean_ranks["fip"] == 1.0 and rank.mean_ranks.idxmax() == "none" and rank.blocks == 12
    assert rank.pairwise_p.at["fip", "ft"] < 0.05 and rank.friedman_p < 1e-3


def test_two_identical_methods_tie_and_are_not_separable():
    same = lambda a, r, g: 75 + 5 * r  # noqa: E731 — identical on every run
    data = frame({"none": const(50), "ft": same, "twin": same, "worse": const(40)})
    marks = stats.row_marks(data, "der")
    assert marks == {**{(a, "ft"): "tie" for a in ATTACKS}, **{(a, "twin"): "tie" for a in ATTACKS}}
    imp = stats.improvement(data).set_index("defense")
    assert imp.at["twin", "p"] == 0.5 and not imp.at["twin", "supported"]
    rank = stats.ranking(data)
    assert rank.mean_ranks["ft"] == rank.mean_ranks["twin"] and rank.pairwise_p.at["ft", "twin"] == 1.0
    agg = stats.aggregate(data).set_index("defense")
    assert agg.at["ft", "der"] == agg.at["twin", "der"] and agg.at["none", "der_lo"] == 50.0


def test_a_single_run_supports_no_claim():
    data = frame({"none": const(50), "ft": const(70), "fip": const(90)}, runs=1)
    assert stats.row_marks(data, "der") == {}
    imp = stats.improvement(data).set_index("defense")
    assert imp.at["fip", "p"] == 1.0 and not imp.at["fip", "supported"] and math.isnan(imp.at["fip", "p_lo"])
    assert "*" not in tables.markdown_report(data).split("DER (%) per attack")[1].split("###")[0]


def test_interquartile_mean_ignores_an_outlier_attack_and_intervals_are_stratified():
    data = frame({"none": const(50), "ft": lambda a, r, g: 95.0 if a == "sig" else 60 + r, "fip": const(70)},
                 noise=0.0)
    agg = stats.aggregate(data).set_index("defense")
    assert agg.at["ft", "der"] == 61.5  # the middle half of {60,61,62,95}×3 (the mean would be 69.5)
    assert agg.at["fip", "der"] == agg.at["fip", "der_lo"] == agg.at["fip", "der_hi"] == 70.0
    assert agg.at["ft", "der_lo"] <= 61.5 <= agg.at["ft", "der_hi"]


def test_report_bytes_are_deterministic():
    data = frame({"none": const(50), "ft": lambda a, r, g: 70 + g.normal(0, 5),
                  "fip": lambda a, r, g: 72 + g.normal(0, 5)})
    assert tables.markdown_report(data) == tables.markdown_report(data.copy())
    assert stats.per_group(data, stats.aggregate).equals(stats.per_group(data.copy(), stats.aggregate))


def test_variance_components_separate_training_and_defense_seeds():
    rng = np.random.default_rng(0)
    rows = []
    for seed, model_effect in enumerate([0.0, 30.0, 60.0]):
        for dseed in range(3):
            rows.append(dict(attack="badnets", defense="ft", seed=seed, defense_seed=dseed,
                             asr=20 + model_effect + rng.normal(0, 0.1)))
            rows.append(dict(attack="badnets", defense="nft", seed=seed, defense_seed=dseed,
                             asr=50 + rng.normal(0, 20)))
    comp = stats.variance_components(pd.DataFrame(rows)).set_index("defense")
    assert comp.at["ft", "share_training"] > 0.99 and abs(comp.at["ft", "sd_training"] - 30) < 1
    assert comp.at["nft", "share_training"] < 0.5 and comp.at["nft", "sd_defense"] > 10
