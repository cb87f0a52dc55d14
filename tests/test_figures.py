"""Tables, figures, headline metrics and plot data from small metrics and feature fixtures."""

import json
import os
import sys
import re
import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from matplotlib.text import Text
from PIL import Image

from backdoor import params as P
from backdoor import plots, report, tables
from backdoor.analysis import features
from backdoor.io import save_tensors
from conftest import ROOT, tiny_cnn

ATTACKS = ["benign", "badnets", "blend", "trojan", "sig", "wanet", "lc", "input_aware"]
DEFENSES = ["none", "ft", "fip", "fast_fip", "nft", "fmp", "sibp", "fp", "nad", "anp", "ibau", "rnp", "ftsam", "clp"]
BASELINES = DEFENSES[7:]
CONFIG = yaml.safe_load((ROOT / "params.yaml").read_text())
FIGURES = P.section(CONFIG, "figures").to_dict()  # declared defaults filled in


def metrics_fixture(budgets=(600,), seeds=(0, 1), defenses=DEFENSES, attacks=ATTACKS, smoothness=False,
                    skip=True) -> pd.DataFrame:
    """A metrics.csv frame shaped like the default study (baselines only on benign, badnets, blend)."""
    rng = np.random.default_rng(0)
    rows = []
    for budget in budgets:
        for attack in attacks:
            for defense in defenses:
                if skip and defense in BASELINES and attack not in ("benign", "badnets", "blend"):
                    continue
                for seed in seeds:
                    acc0, asr0 = 90 + rng.normal(0, .3), (1.5 if attack == "benign" else 99) + rng.normal(0, .2)
                    strength = 0 if defense == "none" else 0.2 + 0.6 * ((zlib.crc32(defense.encode()) % 7) / 7) + 0.1 * np.log10(budget)
                    acc = acc0 - (0 if defense == "none" else 1 + 4 * strength + rng.normal(0, .3))
                    asr = min(100, max(0, asr0 * (1 - min(strength, 1)) + rng.normal(0, 2)))
                    row = dict(dataset="fashion_mnist", model="cnn", attack=attack, defense=defense,
                               clean_budget=budget, seed=seed, defense_seed=0, acc=acc, asr=asr, ra=100 - asr - 5,
                               der=50 if defense == "none" else (max(0, asr0 - asr) - max(0, acc0 - acc) + 100) / 2,
                               runtime_s=0.0 if defense == "none" else 5 + 150 * (zlib.crc32(defense.encode()) % 5) + rng.normal(0, 2),
                               n_clean=budget, acc_before=acc0, asr_before=asr0, ra_before=0.5,
                               defense_type=defense, step_s=1.0, device="cpu", precision="fp32", threads=2)
                    if smoothness:
                        sharp = 20 if attack == "benign" else 600
                        row.update(lambda_max=sharp * (1 if defense == "none" else 0.05 + strength / 10),
                                   trace_h=10 * sharp * (1 if defense == "none" else 0.1 + strength / 10))
                    rows.append(row)
    return pd.DataFrame(rows)


# -- tables --------------------------------------------------------------------------------------

def test_markdown_tables_mark_only_supported_bests_and_skipped_cells():
    text = tables.markdown_report(metrics_fixture(seeds=(0, 1, 2)))
    for label in ["ACC (%)", "ASR (%)", "RA (%)", "DER (%)"]:
        assert f"{label} per attack" in text
    assert "n = 3 runs per cell" in text
    asr_block = text.split("ASR (%) per attack")[1].split("RA (%)")[0]
    badnets = next(line for line in asr_block.splitlines() if line.startswith("| badnets |"))
    cells = badnets.strip("|").split("|")[2:]  # after attack and none
    values = [float(c.strip(" *").split(" [")[0]) for c in cells]
    marked = [i for i, c in enumerate(cells) if "*" in c]
    assert int(np.argmin(values)) in marked  # the best mean carries a mark: best (bold) or a tie (italic)
    assert "—" in text.split("ACC (%) per attack")[1].split("| wanet |")[1].splitlines()[0]
    assert " [" in text and "| badnets | ft |" in text
    assert "### Across attacks" in text and "P(beats ft)" in text and "Mean rank by DER" in text


def test_one_run_per_cell_marks_nothing_and_shows_no_interval():
    text = tables.markdown_report(metrics_fixture(seeds=(0,)))
    block = text.split("ASR (%) per attack")[1].split("RA (%)")[0]
    assert "*" not in block and "[" not in block
    assert "n = 1 runs per cell" in text


def latex_structure(tex: str) -> list[str]:
    """Problems with a LaTeX table: unbalanced environments or braces, rows of the wrong width."""
    problems, stack = [], []
    for kind, env in re.findall(r"\\(begin|end)\{([^}]*)\}", tex):
        if kind == "begin":
            stack.append(env)
        elif not stack or stack.pop() != env:
            problems.append(f"\\end{{{env}}} does not close the innermost environment")
    problems += [f"unclosed {env}" for env in stack]
    depth = 0
    for ch in tex.replace(r"\{", "").replace(r"\}", ""):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            problems.append("a } closes nothing")
            break
    if depth > 0:
        problems.append("unclosed {")
    cols = len(re.search(r"\\begin\{tabular\}\{([^}]*)\}", tex).group(1))
    for line in tex.splitlines():
        if line.endswith(r"\\") and "multicolumn" not in line:
            if line.count("&") != cols - 1:
                problems.append(f"row with {line.count('&') + 1} cells, {cols} columns: {line[:60]}")
    return problems


def test_latex_tables_are_balanced_booktabs_with_one_row_per_attack():
    frame = metrics_fixture()
    tex = tables.latex_tables(frame)
    assert list(tex) == ["fashion_mnist-cnn-n600"]
    table = tex["fashion_mnist-cnn-n600"]
    assert latex_structure(table) == []
    for rule in [r"\toprule", r"\midrule", r"\bottomrule"]:
        assert rule in table
    for attack in ATTACKS:  # one row per attack in each of the four metric panels
        assert len(re.findall(rf"^{re.escape(tables._tex(attack))} &", table, flags=re.M)) == 4
    assert table.count(r"\textbf{") + table.count(r"\textit{") >= 4 * len(ATTACKS)  # a mark per row
    assert r"fashion\_mnist" in table and r"\scriptsize\,[" in table and "--" in table


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no pdflatex (apt-get install texlive-latex-recommended)")
def test_latex_table_compiles_in_a_plain_article(tmp_path):
    (tmp_path / "t.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs,graphicx}\n\\begin{document}\n"
                                    + tables.latex_tables(metrics_fixture())["fashion_mnist-cnn-n600"]
                                    + "\\end{document}\n")
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:]
    assert (tmp_path / "t.pdf").stat().st_size > 1000


def test_headline_averages_over_the_attacks_every_defense_ran():
    frame = metrics_fixture()
    head = tables.headline(frame)
    fip = head["fashion_mnist-cnn-n600"]["fip"]
    runs = frame[(frame.defense == "fip") & frame.attack.isin(["badnets", "blend"])]
    assert fip["asr"] == round(runs["asr"].mean(), 2) and fip["seconds"] == round(runs["runtime_s"].mean(), 2)
    assert set(head["fashion_mnist-cnn-n600"]) == set(DEFENSES)


def test_sample_efficiency_and_tradeoff_data():
    frame = metrics_fixture(budgets=(10, 100, 600, 3000), defenses=["none", "ft", "fip"], skip=False)
    wide = tables.sample_efficiency_wide(frame, ["badnets", "blend"], ["ft", "fip"], "asr")
    assert wide["clean_budget"].tolist() == [10, 100, 600, 3000]
    assert list(wide.columns) == ["clean_budget", "badnets_ft", "badnets_fip", "blend_ft", "blend_fip"]
    mean = frame[(frame.attack == "blend") & (frame.defense == "fip") & (frame.clean_budget == 100)]["asr"].mean()
    assert wide.loc[1, "blend_fip"] == pytest.approx(mean)

    sweep = frame[frame.clean_budget == 600].copy()
    extra = sweep[sweep.defense == "fip"].assign(defense="fip_eta_f_5em01", asr=0.5, acc=70.0)
    points = tables.tradeoff(pd.concat([sweep, extra]), {"fip": {"knob": "eta_f", "defenses": ["fip", "fip_eta_f_5em01"]}},
                             {"fip": {"eta_f": 5e-3}, "fip_eta_f_5em01": {"eta_f": 0.5}})
    assert len(points) == 2 * len(ATTACKS)
    study = points[points.study]
    assert set(study["defense"]) == {"fip"} and set(points[~points.study]["value"]) == {0.5}


# -- figures -------------------------------------------------------------------------------------

REPORT_FIGURES = ["heatmaps", "aggregate", "improvement", "ranks", "runtime_asr", "smoothness", "sample_efficiency",
                  "tradeoff"]


def png_size_in(path: Path) -> tuple[float, float]:
    with Image.open(path) as im:
        return im.size[0] / 300, im.size[1] / 300


def test_every_report_output_from_a_metrics_fixture(tmp_path):
    frame = metrics_fixture(budgets=(10, 100, 600, 3000), smoothness=True)
    frame.to_csv(tmp_path / "metrics.csv", index=False)
    figs = FIGURES
    out = {"table": tmp_path / "table.md", "html": tmp_path / "table.html",
           "tex": [tmp_path / f"fashion_mnist-cnn-n{b}.tex" for b in (10, 100, 600, 3000)],
           "headline": tmp_path / "headline.json", "data_runtime_asr": tmp_path / "runtime_asr.csv",
           "data_se_asr": tmp_path / "se_asr.csv", "data_se_acc": tmp_path / "se_acc.csv",
           "data_tradeoff": tmp_path / "tradeoff.csv", "data_aggregate": tmp_path / "aggregate.csv",
           "data_improvement": tmp_path / "improvement.csv", "data_ranks": tmp_path / "ranks.csv"}
    for name in REPORT_FIGURES:
        out[name] = tmp_path / f"{name}.png"
        out[f"{name}_vector"] = [tmp_path / f"{name}.svg", tmp_path / f"{name}.pdf"]
    sweeps = {"fip": {"knob": "eta_f", "defenses": ["fip", "fast_fip"]}}  # two points on one curve
    report.write(tmp_path / "metrics.csv", out, figures=figs, sweeps=sweeps,
                 sweep_params={"fip": {"eta_f": 5e-3}, "fast_fip": {"eta_f": 1e-2}})
    for name in REPORT_FIGURES:
        assert out[name].stat().st_size > 10_000, name
        width, _ = png_size_in(out[name])
        assert width <= 7.2, f"{name} is {width:.1f} in wide: too wide for a page"
        assert out[f"{name}_vector"][0].read_text().startswith("<?xml")
    assert json.loads(out["headline"].read_text())["fashion_mnist-cnn-n600"]["none"]["der"] == 50.0
    assert "<b>" in out["html"].read_text() or "<i>" in out["html"].read_text()
    assert all(latex_structure(p.read_text()) == [] for p in out["tex"])
    ranks = pd.read_csv(out["data_ranks"])
    assert set(ranks["clean_budget"]) == {10, 100, 600, 3000} and ranks["mean_rank"].between(1, len(DEFENSES)).all()
    assert set(pd.read_csv(out["data_improvement"])["defense"]) == set(DEFENSES) - {"none", "ft", "fast_fip"}  # a sweep variant


def test_runtime_labels_do_not_overlap():
    fig = plots.runtime_figure(metrics_fixture())
    ax = fig.axes[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [Text.get_window_extent(t, renderer) for t in ax.texts if t.get_text() in DEFENSES]  # text, no leader
    assert len(boxes) == len(DEFENSES) - 1  # every defense but the undefended model
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert ax.get_xscale() == "log" and "(s" in ax.get_xlabel() and "(%)" in ax.get_ylabel()
    assert fig.get_size_inches()[0] <= plots.SINGLE  # one column


def test_heatmap_shows_the_acc_drop_and_greys_skipped_cells():
    frame = metrics_fixture()
    fig = plots.heatmap_figure(frame)
    drop_ax, asr_ax = fig.axes[0], fig.axes[1]
    drop = drop_ax.images[0].get_array()
    assert np.nanmax(np.abs(drop[:, 0])) < 1e-9  # the undefended column: ΔACC = 0
    assert drop_ax.images[0].norm.vmin < 0 < drop_ax.images[0].norm.vmax
    assert asr_ax.images[0].norm.vmin == 0 and asr_ax.images[0].norm.vmax == 100
    assert sum(t.get_text() == "—" for t in asr_ax.texts) == 5 * len(BASELINES)  # study.skip cells
    plots.plt.close(fig)


def test_smoothness_figure_without_measurements_says_so():
    fig = plots.smoothness_figure(metrics_fixture(), ["fip"])
    assert "No smoothness measurements" in fig.axes[0].texts[0].get_text()
    frame = metrics_fixture(smoothness=True)
    frame.loc[:, "lambda_max"] = np.nan
    assert not plots.has_smoothness(frame) and plots.has_smoothness(metrics_fixture(smoothness=True))
    fig = plots.smoothness_figure(metrics_fixture(smoothness=True), ["fip", "nft"])
    assert [ax.get_yscale() for ax in fig.axes] == ["log", "log"]


# -- features and t-SNE ----------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["cnn", "preact_resnet18"])
def test_penultimate_features_are_the_last_linear_layers_input(arch):
    model = tiny_cnn(arch=arch).eval()
    images = torch.randint(0, 256, (6, 1, 12, 12), dtype=torch.uint8)
    feats = features.penultimate(model, images, batch_size=4)
    head = features.last_linear(model)
    assert feats.shape == (6, head.in_features)
    with torch.no_grad():
        logits = model(images.float() / 255)
        torch.testing.assert_close(head(feats.clone()), logits, rtol=1e-4, atol=1e-4)


def test_extract_stores_a_fixed_subsample_and_embed_is_seeded(tmp_path):
    from backdoor.models import save_checkpoint

    g = torch.Generator().manual_seed(0)
    save_checkpoint(tiny_cnn(), tmp_path / "m.pt")
    save_tensors({"test_x": torch.randint(0, 256, (80, 1, 12, 12), dtype=torch.uint8, generator=g),
                  "test_y": torch.randint(0, 10, (80,), generator=g)}, tmp_path / "prep.pt")
    save_tensors({"test_x": torch.randint(0, 256, (40, 1, 12, 12), dtype=torch.uint8, generator=g),
                  "test_y_true": torch.randint(1, 10, (40,), generator=g),
                  "test_y_target": torch.zeros(40, dtype=torch.long)}, tmp_path / "pois.pt")
    kw = dict(clean_images=50, triggered_images=100, seed=3)
    a = features.extract(tmp_path / "m.pt", tmp_path / "prep.pt", tmp_path / "pois.pt", tmp_path / "f1.pt", **kw)
    b = features.extract(tmp_path / "m.pt", tmp_path / "prep.pt", tmp_path / "pois.pt", tmp_path / "f2.pt", **kw)
    assert a["clean"].shape == (50, 16) and a["triggered"].shape == (40, 16) and a["clean"].dtype == torch.float16
    assert torch.equal(a["clean_idx"], b["clean_idx"]) and torch.equal(a["clean"], b["clean"])
    e1, e2 = features.embed(a, seed=0, perplexity=10), features.embed(a, seed=0, perplexity=10)
    assert e1["clean"].shape == (50, 2) and e1["triggered"].shape == (40, 2)
    np.testing.assert_allclose(e1["clean"], e2["clean"])
    fig = plots.tsne_figure({"before (no defense)": e1, "fip": e2}, "t-SNE")
    plots.save(fig, [tmp_path / "tsne.png"])
    assert png_size_in(tmp_path / "tsne.png")[0] <= 7.2


# -- profiles and DVC's views ------------------------------------------------------------------------

def test_tradeoff_profile_is_generated_from_params():
    sys.path.insert(0, str(ROOT / "workflow/scripts"))
    import tradeoff_profile

    assert (ROOT / "profiles/tradeoff.yaml").read_text() == tradeoff_profile.render(), \
        "profiles/tradeoff.yaml is stale: python3 workflow/scripts/tradeoff_profile.py > profiles/tradeoff.yaml"
    prof = yaml.safe_load((ROOT / "profiles/tradeoff.yaml").read_text())
    for method, sweep in prof["figures"]["tradeoff"].items():
        knob = sweep["knob"]
        values = [P.entry(CONFIG, "defenses", method)[knob]] + [prof["defenses"][d][knob] for d in sweep["defenses"][1:]]
        assert sweep["defenses"][0] == method and len(set(values)) == 5
        for d in sweep["defenses"][1:]:  # a variant differs from its method in the knob only
            assert {k: v for k, v in prof["defenses"][d].items() if k != knob} == \
                   {k: v for k, v in P.entry(CONFIG, "defenses", method).to_dict().items() if k != knob}


@pytest.mark.parametrize("profile,figure", [("sample_efficiency", "sample_efficiency"), ("tradeoff", "tradeoff")])
def test_profiles_add_their_figure_to_the_dag(profile, figure):
    out = subprocess.run(["snakemake", "-n", "--configfile", f"profiles/{profile}.yaml", "--cores", "1", "all"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"results/figures/{figure}.png" in out.stdout and "results/figures/tsne/" not in out.stdout


def test_default_dag_draws_tsne_from_features_of_the_seed_methods():
    sys.path.insert(0, str(ROOT / "workflow/scripts"))
    import snake2dvc

    jobs = {(j.rule.name, *[str(v) for v in j.wildcards_dict.values()]): j
            for j in snake2dvc.snakemake_jobs(ROOT / "Snakefile")}
    tsne = jobs[("tsne", "fashion_mnist", "cnn", "badnets")]
    methods = [str(p).split("/")[-2] for p in tsne.input if str(p).startswith("results/features/")]
    assert methods == ["none", "fip", "nft", "fmp"]  # figures.tsne.defenses
    assert all(str(p).startswith("results/features/") for p in tsne.input)  # no models, no data
    feats = jobs[("features", "fashion_mnist", "cnn", "badnets", "fip", "600", "0", "0")]
    assert "results/runs/fashion_mnist/cnn/badnets/fip/n600_seed0_d0.pt" in [str(p) for p in feats.input]


def dvc(cmd: str, cwd: Path) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    run = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"{cmd}: {run.stdout[-1500:]}{run.stderr[-1500:]}"
    return run.stdout


def test_dvc_metrics_plots_and_exp_show_print_the_report_numbers(tmp_path):
    """The committed dvc.yaml's `metrics:` and `plots:` on report files made from a fixture."""
    views = {k: v for k, v in yaml.safe_load((ROOT / "dvc.yaml").read_text()).items() if k in ("metrics", "plots")}
    assert views["metrics"] == ["results/metrics.json", "results/headline.json"]
    declared = [next(iter(p)) for p in views["plots"]]
    assert "results/plots/runtime_asr.csv" in declared and "results/plots/sample_efficiency_asr.csv" in declared
    frame = metrics_fixture(budgets=(10, 600), defenses=["none", "ft", "fip", "fast_fip", "nft", "fmp", "sibp"])
    (tmp_path / "results/plots").mkdir(parents=True)
    frame.to_csv(tmp_path / "results/metrics.csv", index=False)
    out = {"table": tmp_path / "t.md", "html": tmp_path / "t.html", "headline": tmp_path / "results/headline.json",
           "data_runtime_asr": tmp_path / "results/plots/runtime_asr.csv",
           "data_se_asr": tmp_path / "results/plots/sample_efficiency_asr.csv",
           "data_se_acc": tmp_path / "results/plots/sample_efficiency_acc.csv",
           "data_tradeoff": tmp_path / "results/plots/tradeoff.csv"}
    report.write(tmp_path / "results/metrics.csv", out, figures=FIGURES,
                 sweeps={"fip": {"knob": "eta_f", "defenses": ["fip"]}}, sweep_params={"fip": {"eta_f": 5e-3}})
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(views, sort_keys=False))
    dvc("git init -q && dvc init -q && git add -A && git commit -qm fixture", tmp_path)
    fip = json.loads(out["headline"].read_text())["fashion_mnist-cnn-n600"]["fip"]
    shown = dvc("dvc metrics show", tmp_path)
    assert "fashion_mnist-cnn-n600.fip.asr" in shown and f"{fip['asr']:.2f}".rstrip("0").rstrip(".") in shown
    exp = dvc("dvc exp show --no-pager --csv", tmp_path)
    assert "fashion_mnist-cnn-n600.fip.asr" in exp and str(fip["asr"]) in exp
    plots = json.loads(dvc("dvc plots show --json", tmp_path))
    assert "results/plots/runtime_asr.csv" in json.dumps(plots) and str(round(fip["seconds"], 2))[:5] in json.dumps(plots)
    se = json.dumps(plots)
    assert "badnets_fip" in se and "clean_budget" in se
