"""sparseflows: pruning continuous normalizing flows (Sparse Flows, Liebenwein et al. 2021).

Subpackages map one-to-one to the paper's concepts:

- :mod:`pipeline_lib.data` — toy, tabular (MAF) and image datasets, downloads;
- :mod:`pipeline_lib.flows` — FFJORD vector fields and continuous normalizing flows;
- :mod:`pipeline_lib.training` — optimizers, LR schedule, training loop, checkpoints;
- :mod:`pipeline_lib.pruning` — masks, unstructured / structured pruning, schedules;
- :mod:`pipeline_lib.sparse_flow` — Algorithm 1 (iterative prune / retrain with LR rewinding);
- :mod:`pipeline_lib.evaluation` — test NLL and further metrics.
"""

__version__ = "0.1.0"
