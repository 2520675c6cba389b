"""Training loop: learning, determinism, resume after a kill, divergence and solver errors."""

from __future__ import annotations

import math

import pytest
import torch
from flow_helpers import cfg, make_flow, toy_data, weights

from pipeline_lib.flows import FlowConfig, SolverConfig, SolverError, build_flow
from pipeline_lib.pruning import count_parameters, prune
from pipeline_lib.training import (
    TrainingDivergedError,
    load_checkpoint,
    save_checkpoint,
    train,
)


@pytest.mark.slow  # a real training run
def test_training_lowers_validation_nll():
    x, v = toy_data(1024, 0), toy_data(256, 1)
    flow = make_flow()
    res = train(flow, x, v, cfg(epochs=6, lr=3e-2, batch_size=64, lr_milestones=[4], lr_gamma=0.5))
    # 4 well-separated modes: far below the best single Gaussian (≈2.9 nats)
    assert res.history[-1]["val_nll"] < res.history[0]["val_nll"] - 0.5
    assert res.history[4]["lr"] == pytest.approx(1.5e-2)  # ×γ after the milestone
    assert all(h["nfe_forward"] == 16 for h in res.history)  # rk4, 4 steps of 0.25


def test_training_is_deterministic_on_cpu():
    x, v = toy_data(512, 0), toy_data(128, 1)
    runs = []
    for _ in range(2):
        flow = make_flow()
        train(flow, x, v, cfg())
        runs.append(weights(flow))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_resume_after_kill_matches_uninterrupted(tmp_path):
    x, v = toy_data(512, 0), toy_data(128, 1)
    straight = make_flow()
    train(straight, x, v, cfg(epochs=4, lr_milestones=[2]))
    # "killed" after epoch 2: the checkpoint holds epoch 2; a new process resumes from it
    ckpt = tmp_path / "ckpt.pt"
    first = make_flow()
    train(first, x, v, cfg(epochs=2, lr_milestones=[2]), checkpoint=ckpt)
    resumed = make_flow(seed=99)  # different init: everything must come from the checkpoint
    res = train(resumed, x, v, cfg(epochs=4, lr_milestones=[2]), checkpoint=ckpt)
    assert res.resumed_from_epoch == 2
    assert [h["epoch"] for h in res.history] == [1, 2, 3, 4]
    for a, b in zip(weights(straight), weights(resumed), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    # a finished checkpoint returns at once without training
    again = make_flow(seed=5)
    res2 = train(again, x, v, cfg(epochs=4, lr_milestones=[2]), checkpoint=ckpt)
    assert res2.resumed_from_epoch == 4 and len(res2.history) == 4


def test_masks_hold_during_training():
    x, v = toy_data(512, 0), toy_data(128, 1)
    flow = make_flow()
    prune(flow, "unstructured", 0.4)
    _, nonzero = count_parameters(flow)
    train(flow, x, v, cfg(epochs=2))
    assert count_parameters(flow)[1] == nonzero


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    x, v = toy_data(512, 0), toy_data(128, 1)
    ckpt = tmp_path / "ckpt.pt"
    flow = make_flow()
    train(flow, x, v, cfg(epochs=1), checkpoint=ckpt)
    before = ckpt.read_bytes()
    bad = x.clone()
    bad[7, 0] = float("nan")
    with pytest.raises(TrainingDivergedError, match=r"epoch 2.*train\.lr"):
        train(flow, bad, v, cfg(epochs=2), checkpoint=ckpt)
    assert ckpt.read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))
    state = load_checkpoint(ckpt)
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_checkpoint_with_nan_weights_is_refused(tmp_path):
    flow = make_flow()
    with torch.no_grad():
        next(flow.parameters())[0, 0] = math.inf
    with pytest.raises(TrainingDivergedError, match="non-finite"):
        save_checkpoint(tmp_path / "x.pt", {"model": flow.state_dict()}, flow)
    assert not (tmp_path / "x.pt").exists()


def test_solver_failure_names_epoch_and_fix():
    x, v = toy_data(256, 0), toy_data(64, 1)
    torch.manual_seed(0)
    solver = SolverConfig(method="dopri5", rtol=1e-12, atol=1e-12, max_num_steps=3)
    flow = build_flow(FlowConfig(dim=2, hidden_dims=(16,), solver=solver))
    with pytest.raises(SolverError, match=r"epoch 1.*rtol/atol"):
        train(flow, x, v, cfg(epochs=1))


@pytest.mark.parametrize("bad", [{"epochs": -1}, {"optimizer": "sgd"}, {"lr": 0.0}])
def test_bad_train_config_is_explained(bad):
    with pytest.raises(ValueError, match="train\\."):
        cfg(**bad)


def test_rnode_regularization_reduces_kinetic_energy():
    """With a large kinetic penalty the learned field moves mass along shorter paths."""
    x, v = toy_data(512, 0), toy_data(128, 1)
    energies = []
    for lam in (0.0, 1.0):
        flow = make_flow()
        train(flow, x, v, cfg(epochs=3, lambda_kinetic=lam, lambda_jacobian=lam))
        with torch.no_grad():
            energies.append(flow(x[:256], regularize=True).kinetic.mean().item())
    assert energies[1] < energies[0]


def test_validation_every_k_epochs_keeps_the_model_and_the_final_validation():
    """val_every=3 over 7 epochs: validated after epochs 3, 6 and 7 only; the same weights as
    validating every epoch, and the run's validation NLL is the final model's."""
    from pipeline_lib.evaluation.nll import evaluate_nll

    x, v = toy_data(512, 0), toy_data(128, 1)
    runs = {}
    for k in (1, 3):
        flow = make_flow()
        res = train(flow, x, v, cfg(epochs=7, val_every=k))
        runs[k] = (res, weights(flow), flow)
    sparse, dense = runs[3][0], runs[1][0]
    assert [h["epoch"] for h in sparse.history if h["val_nll"] is not None] == [3, 6, 7]
    assert all(h["nfe_val"] is None for h in sparse.history if h["val_nll"] is None)
    for a, b in zip(runs[1][1], runs[3][1], strict=True):
        assert torch.equal(a, b)
    final = evaluate_nll(runs[3][2], v, 10_000).nll
    assert sparse.val_nll == pytest.approx(final, abs=1e-6) == dense.val_nll
    assert sparse.best_val_nll == min(dense.history[e - 1]["val_nll"] for e in (3, 6, 7))
