# Configuration, experiment expansion, paths and input functions shared by all rules.
import sys
from collections import UserDict
from pathlib import Path

REPO = Path(workflow.basedir).parent
sys.path.insert(0, str(REPO))

from pipeline_lib.data import (
    IMAGE_DATASETS,
    TABULAR_DATASETS,
    TOY_DATASETS,
)  # noqa: E402
from pipeline_lib.data.toy import GAUSSIAN_MODE_DATASETS  # noqa: E402
from pipeline_lib.experiment import (  # noqa: E402
    METRICS,
    check_device,
    check_results_dir,
    check_yaml_keys,
    load_experiments,
)
from pipeline_lib.families import FAMILIES  # noqa: E402
from pipeline_lib.layout import CHECKPOINT_PATH, Layout  # noqa: E402
from pipeline_lib.manifest import register_study  # noqa: E402

# the one place a configuration becomes experiments (validated, defaults filled, sweeps
# expanded, every section typed); every job gets its experiment from its params
check_yaml_keys(workflow.configfiles)
EXPERIMENTS = load_experiments(config)
check_results_dir(config["results"])
RESULTS = config["results"]
STUDY = {name: e.config_hash for name, e in EXPERIMENTS.items()}
if workflow.is_main_process:
    # every torch job checks its device again when it starts (acquire_device), on
    # whichever machine runs it: here only runs that execute locally are checked
    if workflow.local_exec:
        check_device(config["compute"]["device"])
    register_study(RESULTS, STUDY, workflow.configfiles, write=False)

LAYOUT = Layout(RESULTS)  # every path of the results tree (pipeline_lib.layout)
RESOURCES = config["resources"]
COMPUTE = config["compute"]
SUMMARY = LAYOUT.summary
ENV = str(REPO / "environment.yml")
GPU = COMPUTE["gpus_per_job"]
# What a data directory depends on (its rule's parameters): the dataset and its generator.
DATA_IDS = {
    e.data_id: {"dataset": e.dataset, "data": e.spec["data"]}
    for e in EXPERIMENTS.values()
}


wildcard_constraints:
    experiment="[A-Za-z0-9][A-Za-z0-9_.=-]*",
    method="unstructured|structured",
    seed="[0-9]+",
    round="[0-9]{3}",
    data_id="[A-Za-z0-9][A-Za-z0-9_-]*",


def data_dir(exp_name):
    return LAYOUT.data_dir(EXPERIMENTS[exp_name].data_id)


def previous_round(w):
    """Round r reads round r-1's model and record (Algorithm 1 line 5)."""
    prev = checkpoint_dir(w.experiment, w.method, w.seed, int(w.round) - 1)
    return {"model": f"{prev}/model.pt", "record": f"{prev}/round.json"}


def experiment_data(w):
    return data_dir(w.experiment)


def checkpoint_dir(name, method, seed, r):
    """Directory of one checkpoint (round 0 is the dense warm start, shared by the methods)."""
    return LAYOUT.checkpoint_dir(name, method, seed, r)


def records_of(name):
    """Every round record and the files of its enabled metrics, for one experiment."""
    exp = EXPERIMENTS[name]
    metrics = [m for m in METRICS if name in metric_experiments(m)]
    files = []
    for method, seed, r in exp.runs():
        d = checkpoint_dir(name, method, seed, r)
        files.append(f"{d}/round.json")
        for m in metrics:
            files += [
                f for f in LAYOUT.metric_files(d, m).values() if f.endswith(".json")
            ]
    return files


def metric_experiments(metric):
    """The experiments whose checkpoints are evaluated for ``metric`` (it applies to their
    model family and is enabled: Experiment.evaluates)."""
    return [n for n, e in EXPERIMENTS.items() if e.evaluates(metric)]


def experiment_records(w):
    return records_of(w.experiment)


def final_targets():
    """The default target: the summary, tables and figures, and every round's record and
    metrics themselves, so that a round deleted by hand is regenerated (Snakemake would
    otherwise leave a missing intermediate file alone while the summary is up to date), and
    everything downstream of it with it. Nothing when the configuration has no experiment.
    """
    if not EXPERIMENTS:
        return []
    records = [f for name in EXPERIMENTS for f in records_of(name)]
    return [SUMMARY, *all_tables(), *all_figures(), *records]


def all_experiment_summaries():
    return [LAYOUT.experiment_summary(name) for name in EXPERIMENTS]


def flow_datasets():
    """Data sets with a density study (an NLL table each)."""
    return sorted(
        {e.dataset for e in EXPERIMENTS.values() if FAMILIES[e.family].density}
    )


def classifiers():
    return [n for n, e in EXPERIMENTS.items() if FAMILIES[e.family].supervised]


def with_samples():
    return metric_experiments("samples")


def with_hessian():
    return metric_experiments("hessian")


def with_robustness():
    return metric_experiments("robustness")


def with_good_samples():
    return [
        n for n in with_samples() if EXPERIMENTS[n].dataset in GAUSSIAN_MODE_DATASETS
    ]


def all_tables():
    tables = [LAYOUT.table(f"nll_{d}") for d in flow_datasets()]
    if classifiers():
        tables.append(LAYOUT.table("classifier"))
    if with_good_samples():
        tables.append(LAYOUT.table("good_samples"))
    if with_hessian():
        tables.append(LAYOUT.table("hessian"))
    return tables


def image_experiments():
    return [n for n, e in EXPERIMENTS.items() if e.dataset in IMAGE_DATASETS]


def all_figures():
    figures = [LAYOUT.figure("nll_vs_prune_ratio")] if flow_datasets() else []
    if set(image_experiments()) & set(with_samples()):
        figures.append(LAYOUT.figure("sample_grids"))
    if classifiers():
        figures.append(LAYOUT.figure("classifier_vs_prune_ratio"))
    if with_robustness():
        figures.append(LAYOUT.figure("decision_boundaries"))
    if set(with_samples()) - set(image_experiments()):
        figures += [LAYOUT.figure("density_grid"), LAYOUT.figure("vector_field")]
    if with_good_samples():
        figures.append(LAYOUT.figure("good_samples_vs_prune_ratio"))
    if with_hessian():
        figures.append(LAYOUT.figure("hessian_vs_prune_ratio"))
    return figures


def snapshots(w):
    """Density / vector-field arrays of the first seed of every 2-D experiment."""
    files = []
    for name in with_samples():
        first = EXPERIMENTS[name].seeds[0]
        dirs = [
            checkpoint_dir(name, m, s, r)
            for m, s, r in EXPERIMENTS[name].runs()
            if s == first
        ]
        files += [LAYOUT.metric_files(d, "samples")["snapshot"] for d in dirs]
    return files


def boundaries(w):
    """Fig. 9 arrays of the first seed of every classifier evaluated for robustness."""
    files = []
    for name in with_robustness():
        first = EXPERIMENTS[name].seeds[0]
        for m, s, r in EXPERIMENTS[name].runs():
            if s == first:
                d = checkpoint_dir(name, m, s, r)
                files.append(LAYOUT.metric_files(d, "robustness")["boundary"])
    return files


def metric_params(metric):
    """The parameters of one metric's evaluation jobs: the settings it reads, nothing else."""
    return lambda w: EXPERIMENTS[w.experiment].metric_settings(metric)


def training_key(w):
    """What shapes the trained model (evaluation-only settings left out), the parameter that
    decides whether a training job reruns: see config/README.md."""
    return EXPERIMENTS[w.experiment].rerun_key


def experiment_spec(w):
    """The whole experiment a training job runs with (logging and validation frequency
    included). Snakemake tracks only parameters of builtin types for reruns; a UserDict is
    not one, so this parameter reaches the job without deciding reruns (``training_key``
    does)."""
    return UserDict(EXPERIMENTS[w.experiment].to_dict())


def data_settings(w):
    return DATA_IDS[w.data_id]
