"""A job's code dependencies come from the static import graph, follow registry lookups and the
function a script calls, and contain every library module the job really imports."""

import multiprocessing
import sys
from pathlib import Path

import torch

from backdoor import codedeps
from backdoor.io import save_tensors

ROOT = Path(__file__).resolve().parents[1]
LIB = "src/backdoor/"


def files(script: str, values: dict) -> set[str]:
    return {f.removeprefix(LIB) for f in codedeps.job_files(f"workflow/scripts/{script}.py", values, ROOT)}


def test_purify_depends_on_its_defense_and_what_it_imports_only():
    fip = files("purify", {"defense": {"type": "fip"}})
    assert {"defenses/fip.py", "defenses/base.py", "training.py", "steps.py", "workflow/scripts/purify.py"} <= fip
    others = {p.name for p in (ROOT / LIB / "defenses").glob("*.py")} - {"fip.py", "base.py", "__init__.py"}
    assert not {f"defenses/{name}" for name in others} & fip
    assert not {"plots.py", "tables.py", "data/download.py", "data/prepare.py", "attacks/__init__.py"} & fip
    assert "defenses/fip.py" in files("purify", {"defense": {"type": "fast_fip"}})  # fast_fip imports fip
    assert {"defenses/anp.py", "defenses/channels.py"} <= files("purify", {"defense": {"type": "rnp"}})


def test_download_reports_and_poisons_depend_on_their_own_code():
    download = files("download", {})
    assert download == {"workflow/scripts/download.py", "__init__.py", "steps.py", "io.py", "data/__init__.py",
                        "data/registry.py", "data/download.py", "joblog.py"}
    assert files("report", {}) == {"workflow/scripts/report.py", "__init__.py", "io.py", "plots.py", "tables.py",
                                   "stats.py", "report.py", "joblog.py"}
    assert "plots.py" not in files("aggregate", {})
    benign = files("poison", {"attack": {"type": "benign", "probe": "badnets"}})
    assert {"attacks/benign.py", "attacks/badnets.py"} <= benign  # the probe's trigger is used
    assert "attacks/blend.py" not in benign and "training.py" not in benign


def test_new_modules_registry_entries_and_lazy_imports_are_picked_up(tmp_path):
    pkg = tmp_path / "src/backdoor"
    (pkg / "things").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "helper.py").write_text("X = 1\n")
    (pkg / "unused.py").write_text("Y = 2\n")
    (pkg / "steps.py").write_text("import os\n\ndef a():\n    from .helper import X\n    return b()\n\n"
                                  "def b():\n    return 1\n\ndef c():\n    from . import unused\n")
    (pkg / "things/__init__.py").write_text('THINGS = {"one": "backdoor.things.one", "two": "backdoor.things.two:Two"}\n')
    (pkg / "things/one.py").write_text("from ..helper import X\n")
    (pkg / "things/two.py").write_text("")
    script = tmp_path / "job.py"
    script.write_text("from backdoor import steps\n\nsteps.a()\n")
    got = codedeps.job_files(script, {"thing": {"type": "one"}}, tmp_path)
    assert got == ["job.py", "src/backdoor/__init__.py", "src/backdoor/helper.py", "src/backdoor/steps.py",
                   "src/backdoor/things/__init__.py", "src/backdoor/things/one.py"]
    script.write_text("from backdoor import steps\n\nsteps.a()\nsteps.c()\n")
    assert "src/backdoor/unused.py" in codedeps.job_files(script, {}, tmp_path)
    script.write_text("from backdoor import steps\n\nrun(steps)\n")  # passed on: all of it
    assert "src/backdoor/unused.py" in codedeps.job_files(script, {}, tmp_path)


def test_fingerprint_is_the_md5_dvc_records_and_follows_edits(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    import hashlib

    first = codedeps.fingerprint(["a.py"], tmp_path)
    assert first == {"a.py": hashlib.md5(b"x = 1\n").hexdigest()}
    (tmp_path / "a.py").write_text("x = 2  # edited\n")
    assert codedeps.fingerprint(["a.py"], tmp_path) != first


# -- the static closure holds every library module a step really imports ----------------------------

def _run_step(queue, name, kwargs):
    for module in [m for m in sys.modules if m == "backdoor" or m.startswith("backdoor.")]:
        del sys.modules[module]  # what the parent loaded does not count
    from backdoor import steps

    getattr(steps, name)(**kwargs)
    queue.put(sorted(m for m in sys.modules if m == "backdoor" or m.startswith("backdoor.")))


def imported_by(name: str, **kwargs) -> set[str]:
    """Library modules a step imports, run in a fork that first forgets every library module."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run_step, args=(queue, name, kwargs))
    proc.start()
    mods = queue.get(timeout=300)
    proc.join()
    assert proc.exitcode == 0
    return {str(codedeps.module_file(m).relative_to(ROOT)) for m in mods}


def test_static_closure_holds_every_module_the_steps_import(tmp_path):
    from test_steps import prepared

    prep = prepared()
    save_tensors(prep, tmp_path / "prep.pt")
    assert torch.get_num_threads() == 1
    attack = {"type": "benign", "target": 0, "poison_rate": 0.1, "seed": 0, "probe": "badnets"}
    cases = [
        ("poison", dict(prepared_path=str(tmp_path / "prep.pt"), out_path=str(tmp_path / "p.pt"),
                        attack_id="benign", attack_params=attack), "poison", {"attack": attack}),
        ("train", dict(prepared_path=str(tmp_path / "prep.pt"), poisoned_path=str(tmp_path / "p.pt"),
                       model_out=str(tmp_path / "m.pt"), metrics_out=str(tmp_path / "m.json"),
                       model_params={"type": "cnn", "width": 4},
                       train_params={"epochs": 1, "batch_size": 64, "lr": 0.01}, seed=0, device="cpu",
                       precision="fp32"), "train", {"model": {"type": "cnn"}}),
    ]
    for defense, params in [("fip", {"iterations": 2, "batch_size": 16, "probes": 1, "trace_every": 1,
                                     "fisher_batch": 8}),
                            ("rnp", {"unlearn_iterations": 2, "recover_iterations": 2, "batch_size": 16})]:
        dparams = {"type": defense, **params}
        cases.append(("purify", dict(prepared_path=str(tmp_path / "prep.pt"), poisoned_path=str(tmp_path / "p.pt"),
                                     model_path=str(tmp_path / "m.pt"), model_metrics_path=str(tmp_path / "m.json"),
                                     model_out=str(tmp_path / f"{defense}.pt"),
                                     metrics_out=str(tmp_path / f"{defense}.json"),
                                     ids={"dataset": "toy", "model": "cnn", "attack": "benign", "defense": defense},
                                     defense_params=dparams, budget=40, seed=0, device="cpu", precision="fp32"),
                      "purify", {"defense": dparams, "arch": "cnn"}))
    for step, kwargs, script, values in cases:
        static = set(codedeps.job_files(f"workflow/scripts/{script}.py", values, ROOT))
        used = imported_by(step, **kwargs)
        assert used <= static, f"{step} imported {used - static} that its code deps miss"
        # the script itself and the log redirection it wraps the step in are not imported by the step
        assert static - used <= {f"workflow/scripts/{script}.py", "src/backdoor/joblog.py"}, \
            f"{step}: {static - used} never imported"
