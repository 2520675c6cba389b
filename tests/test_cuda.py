"""The torch kernels on a CUDA GPU give the CPU's numbers, and the workflow runs its GPU-tagged
rules there. Skipped on machines without a GPU (CI has none); run on a GPU machine with
``pytest tests/test_cuda.py``."""

from __future__ import annotations

import re
from dataclasses import replace

import pandas as pd
import pytest
import torch
from flow_helpers import make_flow

from pipeline_lib.evaluation.hessian import HessianOperator
from pipeline_lib.flows import SolverConfig
from pipeline_lib.pruning import prune
from pipeline_lib.training import TrainConfig, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def tiny_flow(trace: str = "exact", solver: SolverConfig | None = None):
    return make_flow(trace=trace, solver=solver or SolverConfig()).double()


def four_modes(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(2, n, 2, dtype=torch.float64, generator=g)
    return x + torch.sign(x), v + torch.sign(v)


@pytest.mark.parametrize("solver", [SolverConfig(method="rk4", step_size=0.25), SolverConfig()])
def test_log_density_on_cuda_equals_cpu(solver):
    """Chain-rule exact trace through rk4 and dopri5: same log-density and NFE on both devices."""
    flow = tiny_flow(solver=solver)
    x, _ = four_modes()
    cpu = flow(x)
    gpu = flow.to(CUDA)(x.to(CUDA))
    torch.testing.assert_close(gpu.log_prob.cpu(), cpu.log_prob, rtol=0, atol=1e-9)
    assert gpu.nfe == cpu.nfe


def test_gradients_on_cuda_equal_cpu():
    """Backprop through dopri5 with the RNODE terms (the training objective's gradient)."""
    flow = tiny_flow()
    x, _ = four_modes(64)

    def grads(device):
        model = flow.to(device)
        model.zero_grad()
        out = model(x.to(device), regularize=True)
        (-out.log_prob.mean() + 0.1 * out.kinetic.mean() + 0.1 * out.jacobian.mean()).backward()
        return torch.cat([p.grad.flatten().cpu() for p in model.parameters()])

    cpu = grads("cpu")
    gpu = grads(CUDA)
    assert (gpu - cpu).norm() <= 1e-8 * cpu.norm()


def test_training_on_cuda_gives_the_cpu_nll():
    """Two epochs of training (exact trace, dopri5) on each device: the same validation NLLs."""
    x, v = four_modes()
    nlls = {}
    for device in ("cpu", "cuda"):
        flow = tiny_flow()
        cfg = TrainConfig(epochs=2, batch_size=64, lr=1e-2, seed=0, device=device)
        res = train(flow, x, v, cfg)
        nlls[device] = [h["val_nll"] for h in res.history]
        assert next(flow.parameters()).device.type == torch.device(device).type
    assert nlls["cuda"][-1] < nlls["cuda"][0]
    assert nlls["cuda"] == pytest.approx(nlls["cpu"], abs=1e-7)


def test_hessian_vector_product_on_cuda_equals_cpu():
    """The masked Hessian operator (double backprop through the solver) on both devices."""
    flow = tiny_flow(solver=SolverConfig(method="rk4", step_size=0.25))
    prune(flow, "unstructured", 0.5)
    x, _ = four_modes(64)
    cpu_op = HessianOperator(flow, x, divergence="exact", noise_seed=3)
    v = torch.randn(cpu_op.mask.numel(), dtype=torch.float64) * cpu_op.mask
    hv_cpu = cpu_op(v)
    gpu_flow = flow.to(CUDA)
    gpu_op = HessianOperator(gpu_flow, x.to(CUDA), divergence="exact", noise_seed=3)
    hv_gpu = gpu_op(v.to(CUDA)).cpu()
    assert (hv_gpu - hv_cpu).norm() <= 1e-8 * hv_cpu.norm()


def test_workflow_runs_the_torch_rules_on_the_gpu(tmp_path):
    """The tiny study with ``compute.device: cuda`` and ``--resources gpu=1``: every torch job
    logs the GPU it leased, and the results have the CPU run's rows."""
    from test_workflow import snakemake, tiny_config

    cfg_path = tiny_config(tmp_path)
    cfg_path.write_text(cfg_path.read_text().replace("device: cpu", "device: cuda"))
    res = snakemake(
        ["--cores", "4", "--resources", "gpu=1", "--configfile", str(cfg_path)],
        tmp_path,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    logs = sorted((tmp_path / "results" / "logs" / "tiny").rglob("round*.log"))
    logs += sorted((tmp_path / "results" / "logs" / "tiny").rglob("evaluate_*.log"))
    # train_dense + 4 prune rounds, and their evaluations (NLL, samples, Hessian)
    assert len(logs) == 5 + 3 * 5
    for log in logs:
        assert re.search(r"device cuda:\d+", log.read_text()), log
    df = pd.read_parquet(tmp_path / "results" / "summary.parquet")
    assert len(df) == 6 and df["test_nll"].notna().all()


def test_cuda_graph_training_equals_eager_training(caplog):
    """rk4 training with full batches replayed from a CUDA graph and the last, smaller batch of
    every epoch eager beside it: the same validation NLLs and weights as eager training."""
    x, v = four_modes(250)  # 3 batches of 64 and one of 58 per epoch
    runs = {}
    for graphs in (True, False):
        flow = tiny_flow(solver=SolverConfig(method="rk4", step_size=0.25))
        cfg = TrainConfig(
            epochs=3, batch_size=64, lr=1e-2, seed=0, device="cuda", cuda_graphs=graphs
        )
        with caplog.at_level("INFO", logger="sparseflows"):
            caplog.clear()
            res = train(flow, x, v, cfg)
        assert ("CUDA graph captured" in caplog.text) == graphs
        runs[graphs] = (
            [h["val_nll"] for h in res.history],
            torch.cat([p.flatten() for p in flow.parameters()]),
        )
    (nll_g, w_g), (nll_e, w_e) = runs[True], runs[False]
    assert nll_g[-1] < nll_g[0]
    assert nll_g == pytest.approx(nll_e, abs=1e-9)
    assert (w_g - w_e).norm() <= 1e-8 * w_e.norm()


def test_cuda_graph_draws_fresh_hutchinson_noise_and_falls_back_for_dopri5(caplog):
    """Replays of a Hutchinson RNODE step differ (new noise each time) and average to the exact
    trace's loss; an adaptive solver is not captured and trains eagerly."""
    from pipeline_lib.cuda_graphs import GraphedTrainingStep
    from pipeline_lib.training import training_loss

    x, _ = four_modes(64)
    x = x.to(CUDA)
    cfg = TrainConfig(lambda_kinetic=0.01, lambda_jacobian=0.01)
    flow = tiny_flow("hutchinson", SolverConfig(method="rk4", step_size=0.25)).to(CUDA)
    step = GraphedTrainingStep(flow, lambda m, b: training_loss(m, b, cfg), x)
    nlls = torch.stack([step.step(x)[1].clone() for _ in range(400)])
    assert nlls.unique().numel() > 300
    exact = -flow(x, trace="exact").log_prob.mean()
    assert abs(nlls.mean() - exact) < 4 * nlls.std() / 20
    dopri = tiny_flow("exact").to(CUDA)
    with caplog.at_level("INFO", logger="sparseflows"):
        assert GraphedTrainingStep.maybe(dopri, lambda m, b: training_loss(m, b, cfg), x) is None
    assert "solver dopri5" in caplog.text


def test_resumed_gpu_round_with_hutchinson_noise_matches_an_uninterrupted_one(tmp_path):
    """The saved state holds the CUDA random state as well: Hutchinson noise is drawn on the
    GPU, so a round resumed after epoch 1 must draw the same noise in epoch 2."""
    x, v = four_modes()
    cfg = TrainConfig(epochs=2, batch_size=128, lr=1e-2, device="cuda", cuda_graphs=False)

    def weights(model):
        return [p.detach().cpu() for p in model.parameters()]

    clean = tiny_flow("hutchinson")
    train(clean, x, v, cfg)
    ckpt = tmp_path / "state.pt"
    train(tiny_flow("hutchinson"), x, v, replace(cfg, epochs=1), ckpt)
    torch.cuda.manual_seed_all(12345)  # whatever ran in between moved the GPU generator
    resumed = tiny_flow("hutchinson")
    res = train(resumed, x, v, cfg, ckpt)
    assert res.resumed_from_epoch == 1
    for a, b in zip(weights(clean), weights(resumed), strict=True):
        assert torch.equal(a, b)


def test_classifier_trains_and_is_measured_on_cuda_as_on_cpu():
    """The §4.6 classifier on the GPU: the cross-entropy, a training run's weights and the
    robustness numbers equal the CPU's."""
    from pipeline_lib.classifier import ClassifierConfig, build_classifier, labelled_examples
    from pipeline_lib.evaluation.robustness import (
        RobustnessConfig,
        classifier_robustness,
        classifier_snapshot,
    )

    x, _ = four_modes(256)
    labels = (x[:, 0] * x[:, 1] > 0).long()
    examples = labelled_examples(x, labels)
    solver = SolverConfig(method="dopri5", rtol=1e-8, atol=1e-8)
    cfg = TrainConfig(lr=1e-2, epochs=2, batch_size=64, seed=0)

    def run(device):
        torch.manual_seed(0)
        model = build_classifier(ClassifierConfig(dim=2, hidden_dims=(16,), solver=solver))
        model = model.double()
        train(model, examples, examples, replace(cfg, device=str(device)))
        rob = RobustnessConfig(grid_resolution=50, noise_draws=2, snapshot_resolution=10)
        xs, ys = x.to(device), labels.to(device)
        gen = torch.Generator().manual_seed(0)
        measured = classifier_robustness(model.predict, xs, ys, rob, generator=gen)
        snap = classifier_snapshot(model, xs, ys, rob, generator=gen)
        weights = torch.cat([p.detach().flatten().cpu() for p in model.parameters()])
        return weights, measured, snap

    w_cpu, m_cpu, s_cpu = run("cpu")
    w_gpu, m_gpu, s_gpu = run(CUDA)
    assert (w_gpu - w_cpu).norm() <= 1e-6 * w_cpu.norm()
    assert m_gpu["noise_accuracy"] == m_cpu["noise_accuracy"]
    assert abs(m_gpu["boundary_distance_mean"] - m_cpu["boundary_distance_mean"]) < 1e-3
    torch.testing.assert_close(torch.tensor(s_gpu["prob"]), torch.tensor(s_cpu["prob"]))


def test_image_flow_trains_on_cuda_from_a_cuda_graph(caplog):
    """The multiscale image flow with the RNODE settings (rk4, fixed end time) on uint8
    images: full batches replayed from a CUDA graph (dequantization noise drawn inside it),
    the loss falls, and the trained flow's exact log-probability on the GPU equals the CPU's."""
    from pipeline_lib.flows.multiscale import MultiscaleConfig, build_multiscale

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (96, 1, 8, 8), dtype=torch.uint8, generator=g)
    cfg = MultiscaleConfig(dim=(1, 8, 8), hidden_dims=(8,), activation="softplus",
                           solver=SolverConfig(method="rk4", step_size=0.25))  # fmt: skip
    torch.manual_seed(0)
    flow = build_multiscale(cfg)
    train_cfg = TrainConfig(epochs=3, batch_size=32, lr=1e-2, seed=0, device="cuda",
                            lambda_kinetic=0.01, lambda_jacobian=0.01)  # fmt: skip
    with caplog.at_level("INFO", logger="sparseflows"):
        res = train(flow, images, images[:32], train_cfg)
    assert "CUDA graph captured" in caplog.text
    assert res.history[-1]["train_nll"] < res.history[0]["train_nll"]

    from pipeline_lib.flows.images import dequantize

    x = dequantize(images[:16], torch.Generator().manual_seed(1))  # the same noise for both
    with torch.no_grad():
        gpu = flow(x.to(CUDA), trace="exact").log_prob.cpu()
        cpu = flow.cpu()(x, trace="exact").log_prob
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-2)
