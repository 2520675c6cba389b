"""CNF log-density against closed forms; sampling / inverse consistency; NFE; RNODE terms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline_lib.flows import (
    CNF,
    ContinuousFlow,
    FlowConfig,
    ODENet,
    SolverConfig,
    build_flow,
    standard_normal_logprob,
)

TIGHT = SolverConfig(method="dopri5", rtol=1e-9, atol=1e-9)


class LinearField(nn.Module):
    """f(z, t) = A z: the flow map is exp(AT), so log p(x) has a closed form."""

    def __init__(self, A: torch.Tensor) -> None:
        super().__init__()
        self.A = nn.Parameter(A.clone())

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return z @ self.A.T


def closed_form_logprob(A: torch.Tensor, x: torch.Tensor, T: float) -> torch.Tensor:
    """log p(x) = log N(exp(AT) x) + T·tr(A)  (Liouville: log det exp(AT) = T tr A)."""
    z = x @ torch.linalg.matrix_exp(A * T).T
    return standard_normal_logprob(z) + T * torch.trace(A)


@pytest.fixture
def linear_flow():
    torch.manual_seed(0)
    A = torch.tensor([[-0.3, 0.8, 0.1], [-0.5, 0.2, 0.0], [0.3, -0.1, -0.4]], dtype=torch.float64)
    T = 0.7
    flow = ContinuousFlow([CNF(LinearField(A), T=T, trace="exact", solver=TIGHT)], dim=3).double()
    x = torch.randn(64, 3, dtype=torch.float64)
    return flow, A, T, x


def test_exact_trace_matches_closed_form(linear_flow):
    flow, A, T, x = linear_flow
    with torch.no_grad():
        got = flow.log_prob(x)
    want = closed_form_logprob(A, x, T)
    assert torch.allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_hutchinson_is_unbiased(linear_flow, noise):
    flow, A, T, x = linear_flow
    flow.blocks[0].noise = noise
    draws = 4000
    x1 = x[:1].repeat(draws, 1)  # every row gets its own noise draw
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        est = flow.log_prob(x1, trace="hutchinson", generator=gen)
    want = closed_form_logprob(A, x[:1], T).item()
    stderr = est.std().item() / math.sqrt(draws)
    assert stderr > 0  # the estimator is random: the test could fail
    assert abs(est.mean().item() - want) < 3 * stderr


def test_sample_logprob_round_trip_and_inverse():
    torch.manual_seed(3)
    cfg = FlowConfig(
        dim=2, hidden_dims=(16, 16), num_blocks=2, activation="tanh", solver=TIGHT, trace="exact"
    )
    flow = build_flow(cfg).double()
    with torch.no_grad():
        x, logp = flow.sample(32)
        out = flow(x)
        assert torch.allclose(out.log_prob, logp, atol=1e-5)
        x_back, _ = flow.inverse(out.z)
        assert torch.allclose(x_back, x, atol=1e-6)


def test_nfe_counts_fixed_grid_evaluations():
    """rk4 makes 4 evaluations per step; T=1, step 0.1 → 10 steps → 40 per block."""
    torch.manual_seed(0)
    solver = SolverConfig(method="rk4", step_size=0.1)
    flow = build_flow(FlowConfig(dim=2, hidden_dims=(8,), num_blocks=3, solver=solver))
    with torch.no_grad():
        out = flow(torch.randn(5, 2))
    assert out.nfe == 3 * 40
    assert flow.nfe == 3 * 40


def test_rnode_terms_for_linear_field(linear_flow):
    """Exact trace: ∫‖∂f/∂z‖²_F dt = T‖A‖²_F; ∫‖f‖² dt by fine quadrature of ‖A e^{At} x‖²."""
    flow, A, T, x = linear_flow
    with torch.no_grad():
        out = flow(x[:4], regularize=True)
    assert torch.allclose(out.jacobian, torch.full((4,), T * A.pow(2).sum().item(), dtype=A.dtype))
    ts = torch.linspace(0, T, 4001, dtype=torch.float64)
    vals = torch.stack([(x[:4] @ (A @ torch.linalg.matrix_exp(A * t)).T).pow(2).sum(1) for t in ts])
    kinetic = torch.trapezoid(vals, ts, dim=0)
    assert torch.allclose(out.kinetic, kinetic, rtol=1e-5)


def test_adjoint_and_backprop_gradients_agree(linear_flow):
    flow, A, T, x = linear_flow
    grads = []
    for adjoint in (False, True):
        flow.zero_grad()
        solver = SolverConfig(rtol=1e-9, atol=1e-9, adjoint=adjoint)
        (-flow.log_prob(x, solver=solver).mean()).backward()
        grads.append(flow.blocks[0].dynamics.net.A.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    # and both agree with the closed form's gradient
    A_leaf = A.clone().requires_grad_(True)
    (-closed_form_logprob(A_leaf, x, T).mean()).backward()
    assert torch.allclose(grads[0], A_leaf.grad, atol=1e-5)


@pytest.mark.parametrize("layer_type", ["concat", "concatsquash"])
@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "softplus", "elu", "swish", "relu"])
def test_odenet_shapes_and_time_dependence(layer_type, activation):
    net = ODENet(3, (7, 5), layer_type, activation)
    z = torch.randn(4, 3)
    a, b = net(torch.tensor(0.0), z), net(torch.tensor(0.9), z)
    assert a.shape == (4, 3)
    assert not torch.allclose(a, b)  # time reaches the output


def test_concat_layer_equals_explicit_concatenation():
    net = ODENet(2, (6,), "concat", "tanh")
    z, t = torch.randn(5, 2), torch.tensor(0.3)
    layer = net.layers[0]
    explicit = layer.linear(torch.cat([torch.full((5, 1), 0.3), z], 1))
    assert torch.allclose(layer(t, z), explicit, atol=1e-6)


def test_trainable_end_time_gets_gradient():
    flow = build_flow(FlowConfig(dim=2, hidden_dims=(8,), train_T=True, T=0.5))
    (-flow.log_prob(torch.randn(16, 2)).mean()).backward()
    assert flow.blocks[0].sqrt_end_time.grad is not None


def test_bad_solver_config_is_explained():
    with pytest.raises(ValueError, match="step_size"):
        SolverConfig(method="rk4")
    with pytest.raises(ValueError, match="unknown solver"):
        SolverConfig(method="dopri")
    with pytest.raises(ValueError, match="activation"):
        ODENet(2, (4,), activation="gelu")


def test_sampling_without_density_gives_the_same_points_cheaper():
    torch.manual_seed(0)
    flow = build_flow(
        FlowConfig(dim=2, hidden_dims=(8,), solver=SolverConfig(method="rk4", step_size=0.25))
    )
    with torch.no_grad():
        flow.reset_nfe()
        x1, logp = flow.sample(16, generator=torch.Generator().manual_seed(3))
        x2, none = flow.sample(16, generator=torch.Generator().manual_seed(3), with_log_prob=False)
    assert none is None and logp is not None
    assert torch.allclose(x1, x2, atol=1e-6)


def test_adjoint_with_hutchinson_noise_matches_backprop():
    """The adjoint pass re-evaluates the dynamics with the forward solve's noise."""
    torch.manual_seed(0)
    flow = build_flow(
        FlowConfig(dim=2, hidden_dims=(8,), trace="hutchinson", solver=TIGHT)
    ).double()
    x = torch.randn(32, 2, dtype=torch.float64)
    grads = []
    for adjoint in (False, True):
        flow.zero_grad()
        solver = SolverConfig(rtol=1e-9, atol=1e-9, adjoint=adjoint)
        gen = torch.Generator().manual_seed(7)
        (-flow.log_prob(x, solver=solver, generator=gen).mean()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in flow.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


@pytest.mark.parametrize("T, reverse", [(1.0, False), (0.9, False), (0.9, True)])
def test_rk4_fixed_grid_is_torchdiffeqs_rk4(T, reverse):
    """The flow's own rk4 stepping (capture-safe) against torchdiffeq's rk4 on the same dynamics:
    the same states, NFE and gradients (weights and a trainable end time), also when T is not a
    multiple of the step and when integrating backwards."""
    from torchdiffeq import odeint

    torch.manual_seed(0)
    solver = SolverConfig(method="rk4", step_size=0.25)
    block = CNF(ODENet(2, (8, 8)), T=T, train_T=True, trace="exact", solver=solver).double()
    z = torch.randn(16, 2, dtype=torch.float64)
    zeros = torch.zeros(16, dtype=torch.float64)

    def run(ours: bool):
        block.zero_grad()
        block.dynamics.nfe = 0
        if ours:
            out = block(z, zeros, reverse=reverse, regularize=True)
        else:
            T_ = block.end_time
            times = torch.stack([T_, 0 * T_]) if reverse else torch.stack([0 * T_, T_])
            state = (z, zeros, zeros, zeros.clone())
            block.dynamics.solve_trace = "exact"
            out = tuple(
                s[-1] for s in odeint(block.dynamics, state, times, **solver.odeint_kwargs())
            )
        (out[0].pow(2).sum() + out[1].sum() + out[2].sum() + out[3].sum()).backward()
        grads = torch.cat([p.grad.flatten() for p in block.parameters()])
        return torch.cat([o.flatten() for o in out]), grads, block.dynamics.nfe

    ours, ref = run(True), run(False)
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(ours[1], ref[1], rtol=1e-12, atol=1e-12)
    assert ours[2] == ref[2] == 4 * math.ceil(T / 0.25)
    assert block.sqrt_end_time.grad.abs() > 0


def test_released_toy_models_have_the_papers_parameter_counts():
    """Table S1 "Layers L / Hidden h" of the released code's mlp field: Linear(d, h),
    (L - 2) x Linear(h, h), Linear(h, d), no time input."""
    from pipeline_lib.flows import FlowConfig, build_flow

    def count(hidden):
        flow = build_flow(FlowConfig(dim=2, hidden_dims=hidden, layer_type="mlp"))
        return sum(p.numel() for p in flow.parameters() if p.requires_grad)

    assert count((128,)) == (2 * 128 + 128) + (128 * 2 + 2) == 642  # Gaussians, l2_h128
    assert count((64, 64, 64)) == 192 + 2 * (64 * 64 + 64) + 130 == 8642  # l4_h64


def test_mlp_field_ignores_time_and_equals_a_plain_mlp():
    import torch
    from torch import nn

    from pipeline_lib.flows.odenet import ODENet

    torch.manual_seed(0)
    net = ODENet(2, (16, 8), "mlp", "sigmoid").double()
    plain = nn.Sequential(
        nn.Linear(2, 16), nn.Sigmoid(), nn.Linear(16, 8), nn.Sigmoid(), nn.Linear(8, 2)
    ).double()
    for src, dst in zip(net.layers, [plain[0], plain[2], plain[4]], strict=True):
        dst.load_state_dict(src.linear.state_dict())
    z = torch.randn(32, 2, dtype=torch.float64)
    expected = plain(z)
    for t in (0.0, 0.3, 1.0):
        assert torch.allclose(net(torch.tensor(t, dtype=torch.float64), z), expected, atol=1e-14)
