"""sparseflows: pruning continuous normalizing flows (Sparse Flows, Liebenwein et al. 2021).

Modules map to the paper's concepts (docs/ARCHITECTURE.md has the data flow):

- :mod:`pipeline_lib.data` — toy 2-D sets (§4.1) and the MAF tabular sets (§4.2), downloads
  with checksums and safe extraction, train / validation / test splits;
- :mod:`pipeline_lib.flows` — vector fields (the released ``mlp``, FFJORD's ``concat`` and
  ``concatsquash``) and continuous normalizing flows (Eq. 2, exact / Hutchinson trace, RNODE);
- :mod:`pipeline_lib.training` — optimizers, LR schedule, training loop, resumable checkpoints;
- :mod:`pipeline_lib.pruning` — masks, unstructured / structured pruning (Table 1) with the
  released code's budget over all parameters, prune schedules;
- :mod:`pipeline_lib.sparse_flow` — Algorithm 1 (iterative prune / retrain with LR rewinding):
  what a round does (``plan_round``), one round, the loop; :mod:`pipeline_lib.records` — the
  round record (``round.json``) and the divergence rule, without torch;
- :mod:`pipeline_lib.evaluation` — test NLL, good-quality samples (§4.4), the Hessian (§4.5);
- :mod:`pipeline_lib.reporting` — summary, tables beside the published numbers, figures;
- :mod:`pipeline_lib.experiment` — one typed, frozen :class:`~pipeline_lib.experiment.Experiment`
  per configured experiment (:func:`~pipeline_lib.experiment.load_experiments`, the only
  reader of the configuration); :mod:`pipeline_lib.stages` — the workflow's jobs as functions
  of files; :mod:`pipeline_lib.layout` — every path of the results tree;
  :mod:`pipeline_lib.io`, :mod:`pipeline_lib.manifest`,
  :mod:`pipeline_lib.devices` — signed atomic files, one study per results directory, GPUs.

- :mod:`pipeline_lib.classifier` — the neural-ODE classifier of §4.6 (the released ``Node``);
  its training, metrics and workflow rules are not wired in yet.

Image flows (§4.3) are not implemented yet.
"""

__version__ = "0.1.0"
