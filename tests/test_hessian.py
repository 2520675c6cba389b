"""Hessian eigenanalysis of a pruned flow, checked against the dense Hessian of a tiny flow.

The reference Hessian is built independently of :mod:`pipeline_lib.evaluation.hessian`: the NLL
is written as a function of the vector of *unpruned* parameter entries (scattered back into the
parameters with ``torch.func.functional_call``), differentiated twice with
``torch.autograd.functional.hessian`` and eigendecomposed with ``torch.linalg.eigvalsh``.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch.func import functional_call

from pipeline_lib.evaluation.hessian import (
    DenseOperator,
    HessianConfig,
    HessianOperator,
    hessian_metrics,
    hutchinson_trace,
    lanczos,
    largest_eigenvalue,
    power_iteration,
    ritz_statistics,
    rounding_rtol,
)
from pipeline_lib.flows import FlowConfig, SolverConfig, build_flow
from pipeline_lib.pruning import prune

NOISE_SEED = 3
# The tiny flow's Hessian has an exact null space (eigenvalues ~1e-17); Ritz values within this
# distance of 0 count as zero when checking κ and the negative count.
ZERO = 1e-10


@pytest.fixture(scope="module")
def tiny():
    """A 2-D flow with a 4-unit vector field (40 parameters), 6 of its 16 weights pruned."""
    torch.manual_seed(0)
    cfg = FlowConfig(dim=2, hidden_dims=(4,), solver=SolverConfig(method="rk4", step_size=0.25))
    flow = build_flow(cfg).double()
    prune(flow, "unstructured", 0.85)  # 34 of 40 parameters stay: 24 unprunable + 10 weights
    x = torch.randn(32, 2, dtype=torch.float64) * 1.5
    return flow, x


def _unpruned_index(flow) -> tuple[list[str], list[torch.Tensor]]:
    """Per parameter, the flat indices of its unpruned entries (read from the mask buffers)."""
    names, keeps = [], []
    for name, param in flow.named_parameters():
        owner, attr = name.rsplit(".", 1)
        mask = getattr(flow.get_submodule(owner), f"{attr}_mask", None)
        keep = (
            torch.ones(param.numel(), dtype=torch.bool) if mask is None else mask.reshape(-1) != 0
        )
        names.append(name)
        keeps.append(keep.nonzero().squeeze(1))
    return names, keeps


def _dense_hessian(flow, x, divergence: str, solver: SolverConfig | None = None) -> torch.Tensor:
    """Dense Hessian of the mean NLL w.r.t. the unpruned entries, same batch and noise."""
    names, keeps = _unpruned_index(flow)
    base = {n: p.detach().clone() for n, p in flow.named_parameters()}
    u0 = torch.cat([base[n].reshape(-1)[k] for n, k in zip(names, keeps, strict=True)])

    def nll(u: torch.Tensor) -> torch.Tensor:
        params, offset = {}, 0
        for n, k in zip(names, keeps, strict=True):
            flat = base[n].reshape(-1).index_put((k,), u[offset : offset + len(k)])
            params[n] = flat.view(base[n].shape)
            offset += len(k)
        generator = torch.Generator().manual_seed(NOISE_SEED)
        kwargs = {"trace": divergence, "generator": generator, "solver": solver}
        out = functional_call(flow, params, (x,), kwargs)
        return -out.log_prob.mean()

    return torch.autograd.functional.hessian(nll, u0)


@pytest.fixture(scope="module")
def dense(tiny):
    flow, x = tiny
    return {div: _dense_hessian(flow, x, div) for div in ("exact", "hutchinson")}


@pytest.fixture(scope="module")
def full_lanczos(tiny):
    """Lanczos with as many steps as unpruned parameters (shared: it costs 34 HVPs)."""
    op = _operator(tiny)
    return lanczos(op, m=op.dim + 10, generator=torch.Generator().manual_seed(0))


def _operator(tiny, divergence="exact", **kwargs) -> HessianOperator:
    flow, x = tiny
    return HessianOperator(flow, x, divergence=divergence, noise_seed=NOISE_SEED, **kwargs)


def _full_index(flow) -> torch.Tensor:
    """Positions of the unpruned entries in the concatenation of all flattened parameters."""
    names, keeps = _unpruned_index(flow)
    offsets, total = [], 0
    for p in flow.parameters():
        offsets.append(total)
        total += p.numel()
    return torch.cat([k + o for k, o in zip(keeps, offsets, strict=True)])


# --------------------------------------------------------------------------- operator


def test_operator_dimension_counts_unpruned_parameters(tiny):
    flow, _ = tiny
    op = _operator(tiny)
    total = sum(p.numel() for p in flow.parameters())
    pruned = sum(int((m == 0).sum()) for n, m in flow.named_buffers() if n.endswith("_mask"))
    assert pruned == 6 and total == 40
    assert op.numel == total
    assert op.dim == total - pruned == len(_full_index(flow))
    assert torch.equal(op.mask.nonzero().squeeze(1), _full_index(flow))


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
@pytest.mark.parametrize("reuse_graph", [True, False])
def test_hvp_equals_dense_hessian_times_vector(tiny, dense, divergence, reuse_graph):
    flow, _ = tiny
    op = _operator(tiny, divergence, reuse_graph=reuse_graph)
    keep = _full_index(flow)
    pruned = torch.ones(op.numel, dtype=torch.bool)
    pruned[keep] = False
    v = torch.randn(op.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    hv = op(v)  # v has nonzero entries at pruned coordinates too: they must be ignored
    H = dense[divergence]
    assert torch.allclose(hv[keep], H @ v[keep], atol=1e-12, rtol=1e-10)
    assert torch.count_nonzero(hv[pruned]) == 0
    assert op.n_hvp == 1


def test_hvp_is_deterministic(tiny):
    v = torch.randn(40, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    reuse = _operator(tiny, "hutchinson")
    recompute = _operator(tiny, "hutchinson", reuse_graph=False)
    assert torch.equal(reuse(v), reuse(v))
    assert torch.equal(recompute(v), recompute(v))
    assert torch.equal(_operator(tiny, "hutchinson")(v), reuse(v))  # same noise seed
    assert torch.allclose(recompute(v), reuse(v), atol=1e-14, rtol=0)
    other_noise = HessianOperator(tiny[0], tiny[1], divergence="hutchinson", noise_seed=99)
    assert not torch.allclose(other_noise(v), reuse(v))  # the noise really enters


def test_adaptive_solver_operator_is_deterministic_and_exact(tiny):
    """dopri5 picks its steps outside autograd: with fixed noise every solve takes the same
    steps, so re-solving per HVP reproduces the HVP exactly, and it is the Hessian of that
    discretized solve."""
    flow, x = tiny
    x = x[:16]
    solver = SolverConfig(method="dopri5", rtol=1e-6, atol=1e-6)
    v = torch.randn(40, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    kwargs = {"solver": solver, "divergence": "hutchinson", "noise_seed": NOISE_SEED}
    recompute = HessianOperator(flow, x, reuse_graph=False, **kwargs)
    first = recompute(v)
    assert torch.equal(first, recompute(v))
    assert torch.allclose(HessianOperator(flow, x, **kwargs)(v), first, atol=1e-14, rtol=0)
    keep = _full_index(flow)
    H = _dense_hessian(flow, x, "hutchinson", solver)
    assert torch.allclose(first[keep], H @ v[keep], atol=1e-12, rtol=1e-10)


def test_adjoint_is_switched_off_and_restored(tiny):
    flow, x = tiny
    v = torch.randn(40, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    want = _operator(tiny)(v)
    blocks = list(flow.blocks)
    saved = [b.solver for b in blocks]
    try:
        for b in blocks:
            b.solver = SolverConfig(method="rk4", step_size=0.25, adjoint=True)
        assert torch.allclose(_operator(tiny)(v), want, atol=1e-14, rtol=0)
        assert all(b.solver.adjoint for b in blocks)
    finally:
        for b, s in zip(blocks, saved, strict=True):
            b.solver = s
    override = SolverConfig(method="rk4", step_size=0.25, adjoint=True)
    op = HessianOperator(flow, x, solver=override, divergence="exact")
    assert torch.allclose(op(v), want, atol=1e-14, rtol=0)


def test_parameter_filter_gives_the_sub_block(tiny, dense):
    flow, x = tiny
    name = "blocks.0.dynamics.net.layers.0.linear.weight"
    op = HessianOperator(flow, x, divergence="exact", params=[name])
    names, keeps = _unpruned_index(flow)
    offset = sum(
        len(k) for n, k in zip(names, keeps, strict=True) if names.index(n) < names.index(name)
    )
    keep = keeps[names.index(name)]
    assert op.dim == len(keep) < op.numel == 8
    block = dense["exact"][offset : offset + len(keep), offset : offset + len(keep)]
    v = torch.randn(op.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(op(v)[keep], block @ v[keep], atol=1e-12, rtol=1e-10)
    with pytest.raises(ValueError, match="unknown or frozen"):
        HessianOperator(flow, x, params=["no.such.parameter"])


# --------------------------------------------------------------------------- eigenvalues


def test_power_iteration_converges_to_the_dominant_eigenvalue(tiny, dense):
    eigs = torch.linalg.eigvalsh(dense["exact"])
    dominant = eigs[eigs.abs().argmax()].item()
    result = power_iteration(_operator(tiny), max_iters=500, tol=1e-10)
    assert result.converged
    assert result.eigenvalue == pytest.approx(dominant, rel=1e-2)
    assert torch.count_nonzero(result.eigenvector[_operator(tiny).mask == 0]) == 0


def test_largest_eigenvalue_is_the_largest_algebraic_one(tiny, dense):
    eigs = torch.linalg.eigvalsh(dense["exact"])
    op = _operator(tiny)
    assert eigs.max() > -eigs.min()  # H: dominant eigenvalue positive; −H: negative
    result = largest_eigenvalue(op, 500, 1e-10)
    assert result.eigenvalue == pytest.approx(eigs.max().item(), rel=1e-2)
    assert abs(result.eigenvalue - eigs.max().item()) <= result.residual  # a valid error bound
    # −H (as a dense matrix, for speed): power iteration finds −λ_max(H), the shifted second
    # run the largest algebraic eigenvalue −λ_min(H).
    negated = DenseOperator(-dense["exact"])
    assert power_iteration(negated, 500, 1e-12).eigenvalue == pytest.approx(-eigs.max().item())
    before = negated.n_hvp
    shifted = largest_eigenvalue(negated, 5000, 1e-12)
    assert shifted.eigenvalue == pytest.approx(-eigs.min().item(), rel=1e-2)
    assert shifted.converged and shifted.n_hvp == negated.n_hvp - before  # both runs counted


def test_lanczos_with_m_equal_dim_reproduces_the_spectrum(tiny, dense, full_lanczos):
    eigs = torch.linalg.eigvalsh(dense["exact"])
    result = full_lanczos
    assert result.n_hvp == 34 == len(result.ritz_values)  # m is capped at the dimension
    assert torch.allclose(result.ritz_values, eigs, atol=1e-9 * eigs.abs().max(), rtol=0)
    assert result.weights.sum().item() == pytest.approx(1.0)


def test_lanczos_finds_lambda_max_in_few_steps(tiny, dense):
    eigs = torch.linalg.eigvalsh(dense["exact"])
    result = lanczos(_operator(tiny), m=15)
    assert result.ritz_values.max().item() == pytest.approx(eigs.max().item(), rel=1e-2)


def test_lanczos_restarts_on_repeated_eigenvalues():
    A = torch.diag(torch.tensor([1.0, 1.0, 1.0, 2.0, 3.0, 7.0], dtype=torch.float64))
    mask = torch.tensor([1, 1, 1, 1, 1, 0])  # the 7 is pruned away
    result = lanczos(DenseOperator(A, mask), m=10)
    assert result.restarts >= 2
    assert torch.allclose(result.ritz_values, torch.tensor([1.0, 1, 1, 2, 3]).double(), atol=1e-12)


def test_ritz_statistics_definitions():
    stats = ritz_statistics([4.0, -2.0, 0.5, 1.0, -1e-14, 1e-14])
    assert stats["lambda_max"] == 4.0 and stats["lambda_min"] == -2.0
    assert stats["lambda_min_positive"] == 1e-14  # threshold 0: the released definition
    assert stats["kappa"] == pytest.approx(4e14)
    assert stats["n_negative_ritz"] == 2
    stats = ritz_statistics([4.0, -2.0, 0.5, 1.0, -1e-14, 1e-14], positive_threshold=1e-10)
    assert stats["lambda_min_positive"] == 0.5 and stats["kappa"] == 8.0
    assert stats["n_negative_ritz"] == 1 and stats["ritz_positive_sum"] == 5.5
    assert math.isnan(ritz_statistics([-1.0, -2.0])["kappa"])


def test_kappa_from_full_lanczos_matches_dense_eigenvalues(dense, full_lanczos):
    eigs = torch.linalg.eigvalsh(dense["exact"])
    positive = eigs[eigs > ZERO]
    stats = ritz_statistics(full_lanczos.ritz_values, positive_threshold=ZERO)
    assert stats["lambda_min_positive"] == pytest.approx(positive.min().item(), rel=1e-6)
    assert stats["kappa"] == pytest.approx((eigs.max() / positive.min()).item(), rel=1e-6)
    assert stats["lambda_min"] == pytest.approx(eigs.min().item(), rel=1e-9)
    assert stats["n_negative_ritz"] == int((eigs < -ZERO).sum()) > 0


# --------------------------------------------------------------------------- trace


def test_hutchinson_trace_matches_dense_trace(tiny, dense):
    flow, _ = tiny
    H = dense["exact"]
    exact = torch.trace(H).item()
    est = hutchinson_trace(_operator(tiny), samples=100, generator=torch.Generator().manual_seed(0))
    assert est.n_hvp == 100
    assert est.stderr == pytest.approx(est.samples.std().item() / math.sqrt(100))
    assert abs(est.mean - exact) < 3 * est.stderr
    # Many probes on the same (dense, embedded) operator: the estimator itself converges.
    full = torch.zeros(40, 40, dtype=torch.float64)
    keep = _full_index(flow)
    full[keep.unsqueeze(1), keep] = H
    mask = torch.zeros(40)
    mask[keep] = 1
    full += torch.diag(1e3 * (1 - mask).double())  # curvature of pruned weights: not counted
    many = hutchinson_trace(DenseOperator(full, mask), samples=20_000)
    assert abs(many.mean - exact) < 3 * many.stderr
    assert many.mean == pytest.approx(exact, rel=0.02)


def test_hutchinson_trace_is_deterministic(tiny):
    op = _operator(tiny, "hutchinson")
    first = hutchinson_trace(op, 10, torch.Generator().manual_seed(7))
    second = hutchinson_trace(op, 10, torch.Generator().manual_seed(7))
    assert torch.equal(first.samples, second.samples)


# --------------------------------------------------------------------------- metrics


def test_hessian_metrics_on_tiny_flow(tiny, dense):
    """SLQ with m ≥ n gives the whole spectrum: λ_max, the positive-Ritz trace and κ equal the
    dense eigendecomposition's; power iteration and Hutchinson (extra columns) agree too."""
    flow, x = tiny
    eigs = torch.linalg.eigvalsh(dense["exact"])
    positive = eigs[eigs > ZERO]
    cfg = HessianConfig(
        fraction=None,
        power_iters=500,
        power_tol=1e-8,
        trace_samples=40,
        divergence="exact",
        noise_seed=NOISE_SEED,
        positive_threshold=ZERO,
    )
    m = hessian_metrics(flow, x, cfg)
    json.dumps(m)
    assert m["definition"] == "slq"
    assert m["lambda_max"] == pytest.approx(eigs.max().item(), rel=1e-6)
    assert m["trace"] == pytest.approx(positive.sum().item(), rel=1e-6)
    assert m["kappa"] == pytest.approx((eigs.max() / positive.min()).item(), rel=1e-6)
    assert m["lambda_min"] == pytest.approx(eigs.min().item(), rel=1e-6)
    assert m["n_negative_ritz"] == int((eigs < -ZERO).sum())
    assert m["lambda_max_power"] == pytest.approx(eigs.max().item(), rel=1e-2)
    exact_trace = torch.trace(dense["exact"]).item()
    assert abs(m["trace_hutchinson"] - exact_trace) < 3 * m["trace_hutchinson_stderr"]
    assert m["n_params_unpruned"] == 34 and m["n_params"] == 40 and m["n_points"] == 32
    assert m["n_hvp"] == m["n_hvp_power"] + m["n_hvp_trace"] + m["n_hvp_lanczos"]
    assert m["n_hvp_lanczos"] == 3 * 34 and m["n_hvp_trace"] == 40  # 3 runs, capped at n
    with torch.no_grad():
        nll = -flow(x, trace="exact").log_prob.mean().item()
    assert m["nll"] == pytest.approx(nll, rel=1e-12)
    assert m["seconds"] > 0


def test_hessian_metrics_subsamples_points(tiny):
    flow, x = tiny
    cfg = HessianConfig(num_points=16, power_iters=3, lanczos_runs=0, trace_samples=0)
    m = hessian_metrics(flow, x, cfg)
    assert m["n_points"] == 16 and m["n_hvp"] == m["n_hvp_power"] <= 6
    assert m["definition"] == "power+hutchinson" and m["lambda_max"] == m["lambda_max_power"]
    assert math.isnan(m["kappa"]) and math.isnan(m["trace"])
    # the released default: int(0.1 · N) random points
    m = hessian_metrics(flow, x, HessianConfig(power_iters=0, lanczos_steps=2, trace_samples=0))
    assert m["n_points"] == 3


def test_parameter_masks_mask_pruned_and_exactly_zero_coordinates():
    """The released analysis masks the coordinates that are exactly 0; structured pruning of
    concatsquash zeroes time-path rows without a mask, and those are masked too."""
    from pipeline_lib.evaluation.hessian import parameter_masks

    torch.manual_seed(0)
    flow = build_flow(FlowConfig(dim=2, hidden_dims=(6,)))
    prune(flow, "structured", 0.7)
    names, params, masks = parameter_masks(flow)
    for name, param, mask in zip(names, params, masks, strict=True):
        assert torch.equal(mask.bool(), param.detach() != 0), name
    gate = dict(zip(names, masks, strict=True))
    assert any("hyper_gate" in n and not bool(mk.all()) for n, mk in gate.items())


def test_config_roundtrip_and_validation():
    cfg = HessianConfig(solver=SolverConfig(method="rk4", step_size=0.1), params=("a",))
    assert HessianConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="divergence"):
        HessianConfig(divergence="approximate")
    with pytest.raises(ValueError, match="trace_samples"):
        HessianConfig(trace_samples=-1)
    with pytest.raises(ValueError, match="λ_max"):
        HessianConfig(power_iters=0, lanczos_runs=0)


def test_default_kappa_excludes_the_null_space_of_a_pruned_flow():
    """A float32 pruned flow whose hidden unit 0 feeds only pruned weights: its incoming
    weights and bias span an exact null space of the masked Hessian. With the default
    threshold (10 float32 epsilons of λ_max), κ and the positive-Ritz sum from full Lanczos
    in float32 equal those of the dense float64 eigendecomposition (to 1 %); with threshold 0
    (the released definition) κ is a ratio with a rounding-level Ritz value. The stored Ritz
    values give the reported κ back."""
    from pipeline_lib.pruning import apply_masks

    torch.manual_seed(3)
    solver = SolverConfig(method="rk4", step_size=0.25)
    cfg = FlowConfig(dim=2, hidden_dims=(4,), layer_type="mlp", solver=solver, trace="exact")
    flow = build_flow(cfg)
    out_layer = flow.blocks[0].dynamics.net.layers[-1].linear
    out_layer.weight_mask[:, 0] = 0
    apply_masks(flow)
    x = torch.randn(32, 2) * 1.5
    eigs = torch.linalg.eigvalsh(_dense_hessian(copy.deepcopy(flow).double(), x.double(), "exact"))
    scale = eigs.abs().max()
    assert int((eigs.abs() < 1e-12 * scale).sum()) == 3  # two weights and a bias of unit 0
    positive = eigs[eigs > 1e-12 * scale]
    assert positive.min() > 10 * rounding_rtol(torch.float32) * scale  # a gap above the default
    n = eigs.numel()
    # the defaults (SLQ 100 steps x 3 runs, κ threshold 10 eps λ_max) on all points
    m = hessian_metrics(flow, x, HessianConfig(fraction=None, power_iters=0, trace_samples=0))
    assert n < 100 and m["kappa_rtol"] == pytest.approx(1.1920929e-6)
    assert m["lambda_max"] == pytest.approx(eigs.max().item(), rel=1e-2)
    assert m["kappa"] == pytest.approx((eigs.max() / positive.min()).item(), rel=1e-2)
    assert m["trace"] == pytest.approx(positive.sum().item(), rel=1e-2)
    assert len(m["ritz_values"]) == len(m["ritz_weights"]) == 3
    assert all(len(r) == n for r in m["ritz_values"])
    assert all(sum(w) == pytest.approx(1.0) for w in m["ritz_weights"])
    runs = [ritz_statistics(r, positive_rtol=m["kappa_rtol"]) for r in m["ritz_values"]]
    assert m["kappa"] == pytest.approx(sum(r["kappa"] for r in runs) / 3, rel=1e-12)
    released = hessian_metrics(
        flow,
        x,
        HessianConfig(fraction=None, power_iters=0, trace_samples=0, positive_rtol=0),
    )
    assert released["kappa"] > 1e3 * m["kappa"] and released["kappa_rtol"] == 0


def test_default_kappa_threshold_follows_the_dtype():
    """10 machine epsilons: 1.19e-6 in float32, 2.2e-15 in float64; a float64 flow's
    Hessian is evaluated at its own rounding level."""
    assert rounding_rtol(torch.float32) == pytest.approx(1.1920929e-6)
    assert rounding_rtol(torch.float64) == pytest.approx(2.220446e-15)
    torch.manual_seed(0)
    cfg = FlowConfig(dim=2, hidden_dims=(3,), layer_type="mlp", trace="exact")
    flow = build_flow(cfg).double()
    x = torch.randn(8, 2, dtype=torch.float64)
    m = hessian_metrics(
        flow, x, HessianConfig(fraction=None, power_iters=0, trace_samples=0, lanczos_runs=1)
    )
    assert m["kappa_rtol"] == rounding_rtol(torch.float64)
    at_default = ritz_statistics(m["ritz_values"][0], positive_rtol=rounding_rtol(torch.float64))
    assert m["kappa"] == at_default["kappa"]
    set_by_hand = HessianConfig(
        fraction=None, power_iters=0, trace_samples=0, lanczos_runs=1, positive_rtol=1e-4
    )
    assert hessian_metrics(flow, x, set_by_hand)["kappa_rtol"] == 1e-4


def test_the_float32_default_ignores_rounding_level_ritz_values():
    """Ritz values of a float32 null space at ±1e-7 of λ_max (the rounding level measured on
    a pruned Gaussians flow) count as zero at the default threshold; 1e-8 took them for the
    smallest positive eigenvalue and gave κ = 3·10⁷."""
    theta = [1.0, 0.5, 1e-7, -1e-7, 3e-8]
    default = ritz_statistics(theta, positive_rtol=rounding_rtol(torch.float32))
    assert default["kappa"] == 2.0 and default["n_negative_ritz"] == 0
    assert default["ritz_positive_sum"] == 1.5
    assert ritz_statistics(theta, positive_rtol=1e-8)["kappa"] == pytest.approx(1 / 3e-8)


def test_default_analysis_is_the_released_one():
    """HessianConfig's defaults are the released definitions (the schema repeats them:
    tests/test_experiment.py compares every schema default with its dataclass)."""
    cfg = HessianConfig()
    assert (cfg.fraction, cfg.lanczos_steps, cfg.lanczos_runs, cfg.power_iters) == (
        0.1,
        100,
        3,
        100,
    )
    assert cfg.divergence is None and cfg.positive_rtol is None
