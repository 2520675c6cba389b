"""Rule decision_boundaries: Fig. 9, decision boundary, state space and trajectories per
prune ratio of every classifier."""

from _runtime import setup_logging

from pipeline_lib.reporting.figures import plot_decision_boundaries

smk = snakemake  # noqa: F821
setup_logging(smk)
plot_decision_boundaries(
    smk.input.summary,
    smk.input.boundaries,
    smk.output.png,
    smk.output.pdf,
    prune_ratios=smk.params.prune_ratios,
)
