"""Jacobians and divergences by the chain rule through the ODENet against autograd; fast and
autograd traces agree in value, gradients and Hessian-vector products."""

from __future__ import annotations

import pytest
import torch

from pipeline_lib.flows import CNFDynamics, FlowConfig, ODENet, SolverConfig, build_flow

LAYER_TYPES = ["mlp", "concat", "concatsquash"]
ACTIVATIONS = ["tanh", "sigmoid", "softplus", "elu", "swish", "relu"]
RK4 = SolverConfig(method="rk4", step_size=0.25)


def make_net(layer_type: str, activation: str, dim: int = 3, seed: int = 0) -> ODENet:
    torch.manual_seed(seed)
    return ODENet(dim, (7, 5), layer_type, activation).double()


def autograd_jacobian(net: ODENet, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """∂f/∂z per sample by torch.autograd.functional.jacobian, shape (B, d, d)."""
    return torch.stack(
        [torch.autograd.functional.jacobian(lambda x: net(t, x[None])[0], zi) for zi in z]
    )


@pytest.mark.parametrize("layer_type", LAYER_TYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_forward_jacobian_equals_autograd_jacobian(layer_type, activation):
    net = make_net(layer_type, activation)
    with torch.no_grad():  # pruned weights are zeros in W: nothing else changes
        net.layers[1].linear.weight[:, ::2] = 0
    z = 2 * torch.randn(9, 3, dtype=torch.float64)
    t = torch.tensor(0.37, dtype=torch.float64)
    f, jac = net.forward_with_jacobian(t, z)
    assert jac.shape == (9, 3, 3)
    torch.testing.assert_close(f, net(t, z), rtol=0, atol=1e-12)
    torch.testing.assert_close(jac, autograd_jacobian(net, t, z), rtol=0, atol=1e-10)


def test_softplus_slope_is_one_above_its_threshold():
    """nn.Softplus is the identity for inputs above 20; its slope there is exactly 1."""
    net = make_net("concat", "softplus")
    with torch.no_grad():
        net.layers[0].linear.weight.mul_(40)
    z = torch.randn(9, 3, dtype=torch.float64)
    t = torch.tensor(0.5, dtype=torch.float64)
    assert (net.layers[0](t, z) > 20).any()
    _, jac = net.forward_with_jacobian(t, z)
    torch.testing.assert_close(jac, autograd_jacobian(net, t, z), rtol=0, atol=1e-10)


@pytest.mark.parametrize("hidden_dims", [(), (6,), (5, 4, 6)])
def test_forward_jacobian_at_any_depth(hidden_dims):
    torch.manual_seed(2)
    net = ODENet(2, hidden_dims, "concatsquash", "elu").double()
    z = torch.randn(4, 2, dtype=torch.float64)
    t = torch.tensor(0.2, dtype=torch.float64)
    _, jac = net.forward_with_jacobian(t, z)
    assert jac.shape == (4, 2, 2)
    torch.testing.assert_close(jac, autograd_jacobian(net, t, z), rtol=0, atol=1e-10)


@pytest.mark.parametrize("hidden_dims", [(), (6,), (7, 5), (5, 4, 6)])
@pytest.mark.parametrize("layer_type", LAYER_TYPES)
def test_divergence_equals_trace_of_autograd_jacobian(hidden_dims, layer_type):
    """Closed forms (one or two hidden layers) and Jacobian rows (other depths, Frobenius)."""
    torch.manual_seed(3)
    net = ODENet(3, hidden_dims, layer_type, "softplus").double()
    with torch.no_grad():  # a pruned coordinate
        net.layers[0].linear.weight[0, 1] = 0
    z = torch.randn(9, 3, dtype=torch.float64)
    t = torch.tensor(0.7, dtype=torch.float64)
    jac = autograd_jacobian(net, t, z)
    f, div, frob = net.forward_with_divergence(t, z)
    assert frob is None and div.shape == (9,)
    torch.testing.assert_close(f, net(t, z), rtol=0, atol=1e-12)
    torch.testing.assert_close(div, jac.diagonal(dim1=1, dim2=2).sum(1), rtol=0, atol=1e-12)
    _, div_f, frob = net.forward_with_divergence(t, z, frobenius=True)
    torch.testing.assert_close(div_f, div, rtol=0, atol=1e-12)
    torch.testing.assert_close(frob, jac.pow(2).sum((1, 2)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("hidden_dims", [(), (6,), (7, 5), (5, 4, 6)])
def test_hutchinson_terms_equal_the_autograd_vector_jacobian_product(hidden_dims):
    torch.manual_seed(4)
    net = ODENet(3, hidden_dims, "concatsquash", "tanh").double()
    z, noise = torch.randn(2, 9, 3, dtype=torch.float64)
    t = torch.tensor(0.1, dtype=torch.float64)
    e_jac = torch.einsum("bi,bik->bk", noise, autograd_jacobian(net, t, z))
    _, div, frob = net.forward_with_divergence(t, z, noise, frobenius=True)
    torch.testing.assert_close(div, (e_jac * noise).sum(1), rtol=0, atol=1e-12)
    torch.testing.assert_close(frob, e_jac.pow(2).sum(1), rtol=0, atol=1e-12)


def dynamics_terms(net: ODENet, trace: str, z: torch.Tensor):
    dyn = CNFDynamics(net, trace)
    zeros = torch.zeros(z.shape[0], dtype=z.dtype)
    return dyn(torch.tensor(0.6, dtype=z.dtype), (z, zeros, zeros, zeros))


@pytest.mark.parametrize("layer_type", LAYER_TYPES)
@pytest.mark.parametrize("activation", ["tanh", "softplus", "relu"])
def test_exact_divergence_and_frobenius_equal_the_autograd_ones(layer_type, activation):
    net = make_net(layer_type, activation)
    z = torch.randn(16, 3, dtype=torch.float64)
    fast = dynamics_terms(net, "exact", z)
    slow = dynamics_terms(net, "exact_autograd", z)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_hutchinson_terms_equal_the_autograd_ones_in_the_dynamics():
    net = make_net("concatsquash", "sigmoid")
    z, noise = torch.randn(2, 16, 3, dtype=torch.float64)
    terms = []
    for trace in ("hutchinson", "hutchinson_autograd"):
        dyn = CNFDynamics(net, trace)
        dyn.noise = noise
        zeros = torch.zeros(16, dtype=z.dtype)
        terms.append(dyn(torch.tensor(0.6, dtype=z.dtype), (z, zeros, zeros, zeros)))
    for a, b in zip(*terms, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_fast_paths_make_no_autograd_calls(monkeypatch, trace):
    net = make_net("concatsquash", "sigmoid")

    def forbidden(*args, **kwargs):
        raise AssertionError("autograd.grad called inside the dynamics")

    monkeypatch.setattr(torch.autograd, "grad", forbidden)
    z = torch.randn(8, 3, dtype=torch.float64)
    dyn = CNFDynamics(net, trace)
    dyn.noise = torch.randn_like(z)
    dyn(torch.tensor(0.5, dtype=z.dtype), (z, torch.zeros(8, dtype=z.dtype)))
    dyn.solve_trace = f"{trace}_autograd"
    with pytest.raises(AssertionError, match="autograd.grad"):
        dyn(torch.tensor(0.5, dtype=z.dtype), (z, torch.zeros(8, dtype=z.dtype)))


def flow_gradients(flow, x: torch.Tensor, trace: str, solver: SolverConfig) -> torch.Tensor:
    flow.zero_grad()
    out = flow(x, trace=trace, solver=solver, regularize=True)
    loss = -out.log_prob.mean() + 0.1 * out.kinetic.mean() + 0.1 * out.jacobian.mean()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in flow.parameters() if p.grad is not None])


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
@pytest.mark.parametrize("adjoint", [False, True], ids=["backprop", "adjoint"])
@pytest.mark.parametrize("layer_type", LAYER_TYPES)
def test_nll_gradients_equal_between_fast_and_autograd_trace(trace, adjoint, layer_type):
    """Two blocks and a trainable end time: gradients through block inputs and time too."""
    torch.manual_seed(0)
    cfg = FlowConfig(dim=2, hidden_dims=(16, 16), num_blocks=2, layer_type=layer_type, train_T=True)
    flow = build_flow(cfg).double()
    x = torch.randn(64, 2, dtype=torch.float64)
    solver = SolverConfig(method="rk4", step_size=0.25, adjoint=adjoint)
    torch.manual_seed(1)  # the same Hutchinson noise for both
    fast = flow_gradients(flow, x, trace, solver)
    torch.manual_seed(1)
    slow = flow_gradients(flow, x, f"{trace}_autograd", solver)
    assert fast.numel() == slow.numel() == sum(p.numel() for p in flow.parameters())
    assert (fast - slow).norm() <= 1e-8 * slow.norm()


def test_adjoint_and_backprop_agree_with_the_fast_exact_trace():
    torch.manual_seed(0)
    flow = build_flow(FlowConfig(dim=2, hidden_dims=(16, 16), trace="exact")).double()
    x = torch.randn(64, 2, dtype=torch.float64)
    grads = [
        flow_gradients(flow, x, "exact", SolverConfig(rtol=1e-9, atol=1e-9, adjoint=adjoint))
        for adjoint in (False, True)
    ]
    assert (grads[0] - grads[1]).norm() <= 1e-5 * grads[1].norm()


def test_unknown_trace_method_is_explained():
    flow = build_flow(FlowConfig(dim=2, hidden_dims=(4,)))
    with pytest.raises(ValueError, match="exact_autograd"):
        flow(torch.randn(3, 2), trace="exact-autograd")


def test_hessian_vector_products_equal_between_fast_and_autograd_exact_trace():
    """Second derivatives in the parameters (used by the Hessian evaluation) agree too."""
    torch.manual_seed(1)
    flow = build_flow(FlowConfig(dim=2, hidden_dims=(8, 8), activation="softplus")).double()
    x = torch.randn(32, 2, dtype=torch.float64)
    params = list(flow.parameters())
    v = [torch.randn_like(p) for p in params]
    hvps = []
    for trace in ("exact", "exact_autograd"):
        loss = -flow.log_prob(x, trace=trace, solver=RK4).mean()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * u).sum() for g, u in zip(grads, v, strict=True))
        hvps.append(torch.cat([h.flatten() for h in torch.autograd.grad(dot, params)]))
    assert (hvps[0] - hvps[1]).norm() <= 1e-8 * hvps[1].norm()


def test_concatsquash_layer_equals_its_formula():
    """``(W z + b) · σ(W_g t + b_g) + W_b t``, evaluated as one affine map with gated weights."""
    layer = ODENet(3, (6,), "concatsquash").double().layers[0]
    z, t = torch.randn(5, 3, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)
    t11 = t.reshape(1, 1)
    formula = layer.linear(z) * torch.sigmoid(layer.hyper_gate(t11)) + layer.hyper_bias(t11)
    torch.testing.assert_close(layer(t, z), formula, rtol=0, atol=1e-12)


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_training_the_same_model_both_ways_gives_the_same_nll(trace):
    """The speed work leaves results unchanged: a tiny flow trained with the chain-rule trace
    and backprop through dopri5, and trained the reference way (autograd trace at every
    evaluation, adjoint gradients), from the same weights with the same data order and noise."""
    from pipeline_lib.training import TrainConfig, train

    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(2, 128, 2, dtype=torch.float64, generator=g)
    x = x + torch.sign(x)  # four modes
    results = []
    for method, adjoint in ((trace, False), (f"{trace}_autograd", True)):
        torch.manual_seed(0)
        solver = SolverConfig(rtol=1e-6, atol=1e-6, adjoint=adjoint)
        flow = build_flow(FlowConfig(dim=2, hidden_dims=(6, 6), trace=method, solver=solver))
        flow = flow.double()
        cfg = TrainConfig(epochs=2, batch_size=64, lr=1e-2, seed=0, eval_trace="exact")
        res = train(flow, x, v, cfg)
        results.append(
            (
                [h["val_nll"] for h in res.history],
                torch.nn.utils.parameters_to_vector(flow.parameters()),
            )
        )
    (nll_fast, w_fast), (nll_ref, w_ref) = results
    assert nll_fast[-1] < nll_fast[0]  # it learned
    assert nll_fast == pytest.approx(nll_ref, abs=1e-5)
    assert (w_fast - w_ref).norm() <= 1e-4 * w_ref.norm()
