"""Snakemake entry point: ACC, ASR, RA, λ_max and Tr(H) of every checkpoint of one trace."""
from backdoor import steps
from backdoor.joblog import logged

with logged(snakemake.log[0]):
    steps.use_threads(snakemake.threads)
    values = snakemake.params.values
    steps.measure_trace(snakemake.input.prepared, snakemake.input.poisoned, snakemake.input.trace,
                        snakemake.output.metrics, values["smoothness"], snakemake.config.get("device", "auto"),
                        values["precision"], values.get("trace_h", True))
