# Configuration, experiment expansion, paths and input functions shared by all rules.
import sys
from pathlib import Path

from snakemake.utils import validate

REPO = Path(workflow.basedir).parent
sys.path.insert(0, str(REPO))

from pipeline_lib.data import TABULAR_DATASETS, TOY_DATASETS  # noqa: E402
from pipeline_lib.experiment import (  # noqa: E402
    check_experiment,
    data_id,
    describe_validation_error,
    expand_experiments,
    round_count,
)

SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")
try:
    validate(config, SCHEMA)
    EXPERIMENTS = expand_experiments(config["experiments"])
    validate({"experiments": EXPERIMENTS}, SCHEMA)
    for _name, _exp in EXPERIMENTS.items():
        check_experiment(_name, _exp)
except ValueError:
    raise
except Exception as err:
    raise ValueError(describe_validation_error(err)) from None

RESULTS = config["results"]
RESOURCES = config["resources"]
COMPUTE = config["compute"]
SUMMARY = f"{RESULTS}/summary.parquet"
ENV = str(REPO / "environment.yml")
GPU = COMPUTE["gpus_per_job"]
DATA_IDS = {data_id(e): e for e in EXPERIMENTS.values()}
ROUNDS = {name: round_count(e) for name, e in EXPERIMENTS.items()}


wildcard_constraints:
    experiment="[A-Za-z0-9][A-Za-z0-9_.=-]*",
    method="unstructured|structured",
    seed="[0-9]+",
    round="[0-9]{3}",
    data_id="[A-Za-z0-9][A-Za-z0-9_-]*",


def data_dir(exp_name):
    return f"{RESULTS}/data/{data_id(EXPERIMENTS[exp_name])}"


def round_dir(w, r=None):
    """results/<experiment>/seed<k>/round000 (dense) or .../<method>/round<r> (pruned)."""
    r = int(w.round) if r is None else r
    base = f"{RESULTS}/{w.experiment}/seed{w.seed}"
    return f"{base}/round000" if r == 0 else f"{base}/{w.method}/round{r:03d}"


def previous_round(w):
    """Round r reads round r-1's model and record (Algorithm 1 line 5)."""
    prev = round_dir(w, int(w.round) - 1)
    return {"model": f"{prev}/model.pt", "record": f"{prev}/round.json"}


def experiment_data(w):
    return data_dir(w.experiment)


def runs(exp_name):
    """(method, seed, round) of every checkpoint of an experiment, round 0 once per seed."""
    exp = EXPERIMENTS[exp_name]
    out = []
    for seed in exp["seeds"]:
        out.append((None, seed, 0))
        for method in exp["prune"]["methods"]:
            out += [(method, seed, r) for r in range(1, ROUNDS[exp_name] + 1)]
    return out


def experiment_records(w):
    """Every round record and test-NLL file of one experiment."""
    files = []
    for method, seed, r in runs(w.experiment):
        base = f"{RESULTS}/{w.experiment}/seed{seed}"
        d = f"{base}/round000" if r == 0 else f"{base}/{method}/round{r:03d}"
        files += [f"{d}/round.json", f"{d}/metrics/nll.json"]
    return files


def final_targets():
    """The default target: nothing when the configuration defines no experiment."""
    if not EXPERIMENTS:
        return []
    return [SUMMARY, *all_tables(), *all_figures()]


def all_experiment_summaries():
    return [f"{RESULTS}/{name}/summary.parquet" for name in EXPERIMENTS]


def all_datasets():
    return sorted({e["dataset"] for e in EXPERIMENTS.values()})


def all_tables():
    return [f"{RESULTS}/tables/nll_{d}.md" for d in all_datasets()]


def all_figures():
    return [f"{RESULTS}/figures/nll_vs_prune_ratio.png"]


def experiment_params(w):
    return EXPERIMENTS[w.experiment]


def data_settings(w):
    return DATA_IDS[w.data_id]
