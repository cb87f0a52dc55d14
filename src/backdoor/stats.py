"""The statistics behind every comparison the study draws (``../shared/design/statistics.md``).

A *run* is one (training seed, defense seed) pair: its own backdoored model and clean draw. Every
defense of a run sees the same model and draw, so two defenses compare on paired runs.

- **Per cell** (attack × defense): the mean over runs with a 95% percentile-bootstrap interval
  (``scipy.stats.bootstrap``); no interval from one run.
- **Best of a row**: the best mean is marked *best* only when its paired difference to every other
  defense has a 95% interval that excludes 0; otherwise it and every defense it is not separated
  from are marked *tied*. One run per cell marks nothing.
- **Across attacks** (Agarwal et al., NeurIPS 2021): the interquartile mean (IQM, the 25%-trimmed
  mean, ``scipy.stats.trim_mean``) of all runs × attacks with a *stratified* bootstrap interval
  (runs resampled within each attack: ``scipy.stats.bootstrap`` resamples each attack's runs as an
  independent sample); and the probability that a method beats the control (FT) on a paired run,
  P = mean over attacks and runs of [D > 0] + ½ [D = 0], D = its DER minus FT's, with the same
  stratified interval.
- **Ranks**: over blocks (attack × run), Friedman's test (``scipy.stats.friedmanchisquare``), then
  pairwise Wilcoxon signed-rank tests with Holm's correction (``scikit_posthocs.posthoc_wilcoxon``;
  Benavoli et al., JMLR 2016), drawn as a critical-difference diagram.

Rankings and aggregates use DER, which counts ACC as well as ASR, never ASR alone. Every bootstrap
uses a generator seeded with ``SEED``: the same metrics give the same bytes. ``rliable`` (which
implements the IQM and stratified bootstrap) is not used: its pinned ``arch`` < 8 fails to import
with pandas 3; the same definitions are computed with SciPy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

CONFIDENCE = 0.95
RESAMPLES = 9999
SEED = 0
RUN = ["seed", "defense_seed"]
CONTROL = "ft"          # the natural control: plain fine-tuning on the same clean set
UNDEFENDED = "none"
RANK_METRIC = "der"
HIGHER_IS_BETTER = {"acc": True, "asr": False, "ra": True, "der": True, "dacc": True, "p_asr": False}


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` runs and its 95% interval (NaN bounds for a single run)."""

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def has_interval(self) -> bool:
        return not (math.isnan(self.lo) or math.isnan(self.hi))

    def excludes(self, value: float = 0.0) -> bool:
        """True when the interval lies strictly on one side of ``value``."""
        return self.has_interval and (self.lo > value or self.hi < value)


def _rng():
    return np.random.default_rng(SEED)


def _bootstrap(samples, statistic) -> tuple[float, float]:
    from scipy import stats

    res = stats.bootstrap(samples, statistic, n_resamples=RESAMPLES, confidence_level=CONFIDENCE,
                          method="percentile", vectorized=True, rng=_rng())
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def interval(values) -> Interval:
    """Mean and percentile-bootstrap interval of ``values`` (NaNs dropped)."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(v.mean())
    if len(v) == 1:
        return Interval(mean, math.nan, math.nan, 1)
    if np.ptp(v) == 0:
        return Interval(mean, mean, mean, len(v))
    lo, hi = _bootstrap((v,), _mean)
    return Interval(mean, lo, hi, len(v))


def paired(a: pd.Series, b: pd.Series) -> Interval:
    """Interval of the mean of ``a − b`` over the runs (index) both have."""
    common = a.index.intersection(b.index)
    return interval((a.loc[common] - b.loc[common]).to_numpy(dtype=float))


def with_dacc(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with ``dacc``: ACC after the defense minus the backdoored model's (points)."""
    return frame.assign(dacc=frame["acc"] - frame["acc_before"])


def runs_of(part: pd.DataFrame, metric: str) -> pd.Series:
    """``metric`` of one cell's rows, indexed by run (seed, defense_seed)."""
    return part.set_index(RUN)[metric]


def cell_intervals(part: pd.DataFrame, metric: str) -> dict[tuple[str, str], Interval]:
    """{(attack, defense): Interval} of one group's runs."""
    return {key: interval(rows[metric]) for key, rows in part.groupby(["attack", "defense"], sort=False)}


def row_marks(part: pd.DataFrame, metric: str) -> dict[tuple[str, str], str]:
    """{(attack, defense): 'best' | 'tie'} for the cells that carry a mark (see the module doc).

    The undefended model is the reference, never a candidate."""
    higher = HIGHER_IS_BETTER[metric]
    marks: dict[tuple[str, str], str] = {}
    for attack, rows in part[part["defense"] != UNDEFENDED].groupby("attack", sort=False):
        cells = {d: runs_of(r, metric) for d, r in rows.groupby("defense", sort=False)}
        cells = {d: s.dropna() for d, s in cells.items() if s.notna().any()}
        if len(cells) < 2 or min(len(s) for s in cells.values()) < 2:
            continue  # one run supports no claim
        means = {d: s.mean() for d, s in cells.items()}
        best = (max if higher else min)(means, key=means.get)
        tied = []
        for d, s in cells.items():
            if d == best:
                continue
            diff = paired(cells[best], s) if higher else paired(s, cells[best])
            if not (diff.has_interval and diff.lo > 0):
                tied.append(d)
        if tied:
            marks.update({(attack, d): "tie" for d in [best, *tied]})
        else:
            marks[(attack, best)] = "best"
    return marks


def score_matrix(part: pd.DataFrame, defense: str, metric: str, attacks) -> pd.DataFrame:
    """Runs (rows) × attacks (columns) of one defense; only runs present for every attack."""
    rows = part[(part["defense"] == defense) & part["attack"].isin(attacks)]
    table = rows.pivot_table(index=RUN, columns="attack", values=metric, aggfunc="mean", sort=True)
    return table.reindex(columns=list(attacks)).dropna()


def _iqm(*samples, axis=-1):
    from scipy.stats import trim_mean

    return trim_mean(np.concatenate(samples, axis=axis), 0.25, axis=axis)


def mean_all(*samples, axis=-1):
    """The mean of all runs × attacks (a statistic for :func:`stratified`)."""
    return np.mean(np.concatenate(samples, axis=axis), axis=axis)


def _win_rate(*samples, axis=-1):
    both = np.concatenate(samples, axis=axis)
    return np.mean((both > 0) + 0.5 * (both == 0), axis=axis)


def stratified(matrix: pd.DataFrame, statistic) -> Interval:
    """``statistic`` of all runs × attacks with a bootstrap that resamples runs within each attack."""
    samples = [matrix[c].to_numpy(dtype=float) for c in matrix.columns]
    if not samples or len(matrix) == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    point = float(statistic(*samples))
    if len(matrix) < 2:
        return Interval(point, math.nan, math.nan, len(matrix))
    if all(np.ptp(s) == 0 for s in samples):
        return Interval(point, point, point, len(matrix))
    lo, hi = _bootstrap(tuple(samples), statistic)
    return Interval(point, lo, hi, len(matrix))


def common_attacks(part: pd.DataFrame, defenses, benign=("benign",)) -> list[str]:
    """The backdoor attacks (study order) that every one of ``defenses`` ran."""
    sets = [set(part.loc[part["defense"] == d, "attack"]) for d in defenses]
    shared = set.intersection(*sets) if sets else set()
    return [a for a in part["attack"].unique() if a in shared and a not in benign]


def aggregate(part: pd.DataFrame, benign=("benign",)) -> pd.DataFrame:
    """Per defense: IQM and stratified interval of DER, ASR and ΔACC over runs × common attacks."""
    part = with_dacc(part)
    defenses = list(part["defense"].unique())
    attacks = common_attacks(part, defenses, benign)
    rows = []
    for d in defenses:
        row = {"defense": d, "attacks": " ".join(attacks)}
        for metric in ("der", "asr", "dacc"):
            m = score_matrix(part, d, metric, attacks)
            iv = stratified(m, _iqm)
            row.update({metric: iv.mean, f"{metric}_lo": iv.lo, f"{metric}_hi": iv.hi})
        row["runs"] = len(score_matrix(part, d, "der", attacks))
        rows.append(row)
    return pd.DataFrame(rows)


def improvement(part: pd.DataFrame, control: str = CONTROL, metric: str = RANK_METRIC,
                benign=("benign",)) -> pd.DataFrame:
    """Per defense (not the control, not the undefended model): P(its ``metric`` beats the
    control's on a paired run), with a stratified interval; ``supported`` when it excludes ½."""
    defenses = [d for d in part["defense"].unique() if d not in (control, UNDEFENDED)]
    if control not in set(part["defense"]):
        return pd.DataFrame(columns=["defense", "p", "p_lo", "p_hi", "runs", "supported", "attacks"])
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    rows = []
    for d in defenses:
        attacks = common_attacks(part, [d, control], benign)
        mine, ctrl = score_matrix(part, d, metric, attacks), score_matrix(part, control, metric, attacks)
        common = mine.index.intersection(ctrl.index)
        diff = sign * (mine.loc[common] - ctrl.loc[common])
        iv = stratified(diff, _win_rate)
        rows.append({"defense": d, "p": iv.mean, "p_lo": iv.lo, "p_hi": iv.hi, "runs": len(diff),
                     "supported": iv.excludes(0.5), "attacks": " ".join(attacks)})
    return pd.DataFrame(rows)


@dataclass
class Ranking:
    """Mean ranks (1 = best) over blocks, Friedman's p and the Holm-corrected pairwise p-values."""

    mean_ranks: pd.Series
    friedman_p: float
    pairwise_p: pd.DataFrame
    blocks: int
    attacks: list[str]


def ranking(part: pd.DataFrame, metric: str = RANK_METRIC, benign=("benign",)) -> Ranking | None:
    """Friedman + Wilcoxon–Holm over blocks (attack × run) where every defense has a value; None
    with fewer than 3 defenses or 2 blocks."""
    import scikit_posthocs as sp
    from scipy import stats

    defenses = list(part["defense"].unique())
    attacks = common_attacks(part, defenses, benign)
    rows = part[part["attack"].isin(attacks)]
    wide = rows.pivot_table(index=["attack", *RUN], columns="defense", values=metric, aggfunc="mean", sort=True)
    wide = wide.reindex(columns=defenses).dropna()
    if wide.shape[1] < 3 or wide.shape[0] < 2:
        return None
    signed = wide if HIGHER_IS_BETTER[metric] else -wide
    ranks = signed.rank(axis=1, ascending=False, method="average").mean()
    with np.errstate(all="ignore"):
        friedman = stats.friedmanchisquare(*[wide[c].to_numpy() for c in wide.columns]).pvalue
    long = wide.reset_index(drop=True).melt(var_name="defense", value_name="value")
    pairwise = sp.posthoc_wilcoxon(long, val_col="value", group_col="defense", p_adjust="holm",
                                   zero_method="zsplit").reindex(index=defenses, columns=defenses)
    return Ranking(ranks, float(friedman), pairwise, int(wide.shape[0]), attacks)


def variance_components(frame: pd.DataFrame, metric: str = "asr") -> pd.DataFrame:
    """How much of a cell's spread comes from the training seed and how much from the defense seed.

    Per (attack, defense) with ≥ 2 training seeds × ≥ 2 defense seeds: a one-way random-effects
    ANOVA with models as groups (defense seeds nested in training seeds). ``within`` is the variance
    between defense seeds on one model; ``between`` the variance of the model means minus the
    share the defense seeds put there (method of moments, floored at 0); ``share_training`` their
    ratio to the sum."""
    rows = []
    for (attack, defense), cell in frame.groupby(["attack", "defense"], sort=False):
        groups = [g[metric].to_numpy(dtype=float) for _, g in cell.groupby("seed", sort=True)]
        groups = [g for g in groups if len(g) >= 2]
        if len(groups) < 2:
            continue
        k = float(np.mean([len(g) for g in groups]))
        within = float(np.mean([g.var(ddof=1) for g in groups]))
        means = np.array([g.mean() for g in groups])
        between = max(0.0, float(means.var(ddof=1)) - within / k)
        total = between + within
        rows.append({"attack": attack, "defense": defense, "models": len(groups), "defense_seeds": int(k),
                     "sd_training": math.sqrt(between), "sd_defense": math.sqrt(within),
                     "share_training": between / total if total > 0 else math.nan})
    return pd.DataFrame(rows)


GROUP = ["dataset", "model", "clean_budget"]


def per_group(frame: pd.DataFrame, make) -> pd.DataFrame:
    """``make(part)`` for every (dataset, model, clean budget) of ``frame``, stacked with those columns."""
    parts = []
    for key, part in frame.groupby(GROUP, sort=False):
        table = make(part)
        if table is not None and len(table):
            parts.append(table.assign(**dict(zip(GROUP, key)))[GROUP + list(table.columns)])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=GROUP)


def rank_table(part: pd.DataFrame, benign=("benign",)) -> pd.DataFrame | None:
    """Mean ranks, Friedman's p and, per defense, the defenses it is separated from (Holm p < 0.05)."""
    rank = ranking(part, benign=benign)
    if rank is None:
        return None
    order = rank.mean_ranks.sort_values()
    return pd.DataFrame({
        "defense": order.index, "mean_rank": order.to_numpy(), "blocks": rank.blocks,
        "friedman_p": rank.friedman_p,
        "separated_from": [" ".join(o for o in order.index if o != d and rank.pairwise_p.at[d, o] < 0.05)
                           for d in order.index]})


# -- hyperparameter stability (issue 24; docs/results/lasting.md) ---------------------------------

STABILITY_METRICS = ("asr", "acc")


def stability(part: pd.DataFrame, sweeps: dict, benign=("benign",)) -> pd.DataFrame:
    """Per swept method of one group: the mean absolute difference (MAD, points) of ASR and ACC between
    each other value of its knob and the study's value (the method's own id), on the same run and
    attack; averaged over the values, then over runs × the backdoor attacks every value ran, with a
    stratified bootstrap interval (runs resampled within each attack). Lower = more stable.
    ``sweeps``: {method: {knob, defenses}} (figures.tradeoff, the method's id first)."""
    rows = []
    for method, sweep in sweeps.items():
        ids = [d for d in sweep["defenses"] if d in set(part["defense"])]
        variants = [d for d in ids if d != method]
        if method not in ids or not variants:
            continue
        attacks = common_attacks(part, ids, benign)
        row = {"method": method, "knob": sweep["knob"], "values": len(variants) + 1, "attacks": " ".join(attacks)}
        for metric in STABILITY_METRICS:
            base = score_matrix(part, method, metric, attacks)
            diffs = [(score_matrix(part, d, metric, attacks) - base).abs() for d in variants]
            mad = sum(diffs[1:], diffs[0]) / len(diffs)
            iv = stratified(mad.dropna(), mean_all)
            row.update({f"mad_{metric}": iv.mean, f"mad_{metric}_lo": iv.lo, f"mad_{metric}_hi": iv.hi})
            row["runs"] = iv.n
        rows.append(row)
    return pd.DataFrame(rows, columns=["method", "knob", "values", "attacks", "runs"] + [
        f"mad_{m}{s}" for m in STABILITY_METRICS for s in ("", "_lo", "_hi")])
