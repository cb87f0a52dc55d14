# Shared helpers: params.yaml checked and resolved, the study matrix, the params each step depends on.
import json
import os
from pathlib import Path

from snakemake.logging import logger

try:
    PARAMS = P.validate(config, "params.yaml")  # every problem at once, with its line
except P.ParamsError as err:
    raise WorkflowError(str(err)) from None
for notice in P.notices(PARAMS):
    logger.warning(notice)

STUDY_ENV = "../../envs/study.yaml"  # for --sdm conda (relative to the rule files)
NCPU = os.cpu_count() or 1
CORES = (
    workflow.global_resources["_cores"].value or NCPU
)  # None for `snakemake --report`
# Torch jobs run one thread each, at most one job per CPU: two 1-thread jobs side by side do 1.3×
# the work of one 2-thread job, and beside another CPU-bound process a 1-thread job slows down in
# proportion where a multi-threaded one collapses (README, "Speed"). With --cores above the CPU
# count every job claims CORES // NCPU of them, so that still no more than NCPU jobs run at once;
# `--set-threads purify=N` (with --cores at most the CPU count) gives that rule N torch threads.
JOB_THREADS = max(1, CORES // NCPU)
os.environ.update(
    BACKDOOR_CORES_PER_THREAD=str(JOB_THREADS)
)  # read by steps.use_threads in the jobs


# Resources of the torch jobs (train, craft, purify, smoothness, features): one GPU each where the
# study runs on one, so `snakemake --cores 8 --resources gpu=1` never puts two jobs on one GPU and
# the SLURM executor asks for one per job; memory and minutes are what the cluster reserves
# (profiles/slurm overrides them per rule). Light rules (download, aggregate, report) stay local.
# GPU slots by memory (params.yaml `gpu:`): each also claims `gpu_mem_mb`, so `--resources
# gpu_mem_mb=<MB per GPU>` (without gpu=1) packs jobs onto one GPU; with `gpu.shard_mb` a job asks
# SLURM for GRES shards (--gres=shard:N) instead of a whole GPU, and SLURM packs them (docs/scaling.md).
USES_GPU = P.uses_gpu(PARAMS.device)


def torch_resources(job="other"):
    """The resources of a torch job of class `job` (train, purify or other: params.yaml gpu.<job>_mb)."""
    claim = getattr(PARAMS.gpu, f"{job}_mb") if USES_GPU else 0
    resources = dict(gpu=int(USES_GPU), gpu_mem_mb=claim, mem_mb=8000, runtime=120)
    if USES_GPU and PARAMS.gpu.shard_mb:
        resources.update(gpu=0, gres=f"shard:{-(-claim // PARAMS.gpu.shard_mb)}")
    return resources


TORCH_RESOURCES = torch_resources()
DATA_RESOURCES = dict(mem_mb=8000, runtime=30)  # prepare, poison: no model, no GPU


wildcard_constraints:
    dataset="[a-z0-9_]+",
    model="[a-z0-9_]+",
    attack="[a-z0-9_]+",
    defense="[a-z0-9_]+",
    seed=r"\d+",
    dseed=r"\d+",
    budget=r"\d+",


def step_params(step):
    """The params.yaml values a job of `step` depends on: a rerun trigger for Snakemake, and the
    same keys are the `params:` of the generated DVC stages."""

    def values(wildcards):
        return P.step_values(config, step, **dict(wildcards.items()))

    return values


def surrogate_model(wildcards):
    """The clean model a crafted attack (trojan, lc, input_aware) is optimised against."""
    s = PARAMS.surrogate
    return f"results/models/{wildcards.dataset}/{s.model}/{s.attack}/seed{s.seed}.pt"


def poison_inputs(wildcards):
    inputs = {"prepared": f"data/prepared/{wildcards.dataset}.pt"}
    if PARAMS.attacks[wildcards.attack].crafted:
        inputs["asset"] = f"results/assets/{wildcards.dataset}/{wildcards.attack}.pt"
    return inputs


RUNS = [
    "{dataset}/{model}/{attack}/{defense}/n{budget}_seed{seed}_d{dseed}".format(**run)
    for run in PARAMS.study.runs()
]
RUN_JSONS = [f"results/runs/{run}.json" for run in RUNS]
RUN_TIMINGS = [f"results/runs/{run}.time.json" for run in RUNS]  # io.timing_path
# The re-tuning attack (analysis.retune): every run of a backdoor attack, and the benign model
# re-tuned with each attack's poisoned images, per run (the floor).
RETUNE = PARAMS.analysis.retune.enabled
# The first attack id of kind benign: the clean model the dynamics and the re-tuning floor use.
BENIGN_ID = [a for a, spec in PARAMS.attacks.items() if spec.kind == "benign"][:1]
RETUNE_RUNS = [
    run
    for run, r in zip(RUNS, PARAMS.study.runs())
    if RETUNE and PARAMS.attacks[r["attack"]].kind != "benign"
]
RETUNE_JSONS = [f"results/retune/runs/{run}.json" for run in RETUNE_RUNS]
RETUNE_FLOOR_JSONS = list(
    dict.fromkeys(
        "results/retune/floor/{dataset}/{model}/{attack}/n{budget}_seed{seed}_d{dseed}.json".format(
            **r
        )
        for r in PARAMS.study.runs()
        if RETUNE and BENIGN_ID and PARAMS.attacks[r["attack"]].kind != "benign"
    )
)
# Every run's and every trained model's files are targets of `all` too: Snakemake (≥ 7.7) would
# otherwise skip a deleted intermediate file whose consumers are up to date, where DVC remakes it.
KEPT_OUTPUTS = [f"results/runs/{run}.pt" for run in RUNS] + [
    f"results/models/{m}.{ext}"
    for m in dict.fromkeys(
        "{dataset}/{model}/{attack}/seed{seed}".format(**run)
        for run in PARAMS.study.runs()
    )
    for ext in ("pt", "json")
]
SMOOTHNESS_JSONS = (
    [f"results/smoothness/{run}.json" for run in RUNS]
    if PARAMS.analysis.smoothness.enabled
    else []
)


# A json output that does not parse (a truncated write, a full disk, an editor) is damaged. DVC sees
# its hash change and reruns the stage; Snakemake compares only times and would redo just the
# tables. So the main process dates each damaged file back to 1970 (its bytes untouched): older than
# its inputs, its job is remade, and `snakemake -n all`, `dvc status` and `make study` agree. Empty
# files are left alone: `snakemake --touch` makes them as placeholders (jobs never write one).
def unreadable(paths):
    bad = []
    for path in paths:
        try:
            if os.path.getsize(path) == 0:
                continue
            with open(path) as f:
                json.load(f)
        except FileNotFoundError:
            continue  # missing outputs: Snakemake's own business
        except (OSError, ValueError):
            bad.append(path)
    return bad


DAMAGED_JSONS = unreadable(
    RUN_JSONS
    + RUN_TIMINGS
    + [p for p in KEPT_OUTPUTS if p.endswith(".json")]
    + [p.replace(".json", ".time.json") for p in KEPT_OUTPUTS if p.endswith(".json")]
    + SMOOTHNESS_JSONS
    + RETUNE_JSONS
    + RETUNE_FLOOR_JSONS
)
if DAMAGED_JSONS and workflow.is_main_process:
    logger.warning(
        f"Snakefile: {len(DAMAGED_JSONS)} output(s) are not valid JSON ({', '.join(DAMAGED_JSONS[:3])}"
        f"{' …' if len(DAMAGED_JSONS) > 3 else ''}); their jobs are remade"
    )
    for path in DAMAGED_JSONS:
        os.utime(path, (0, 0))

# `dvc commit -f` or `dvc checkout` re-copy outputs with their bytes and new times, and Snakemake
# would rerun every job after the first newer file while DVC calls the workspace clean. The main
# process puts back the times `make study` recorded, when every moved file still holds its
# recorded bytes (backdoor.stamps), so both runners agree without `after_dvc.sh`.
if workflow.is_main_process:
    from backdoor import stamps

    RESTAMPED = stamps.restore(Path.cwd())
    if RESTAMPED:
        logger.warning(
            f"Snakefile: {len(RESTAMPED)} output(s) were re-copied with their recorded bytes (dvc commit "
            f"or checkout: {', '.join(RESTAMPED[:2])}{' …' if len(RESTAMPED) > 2 else ''}); their "
            "recorded times are back, nothing reruns for them"
        )
