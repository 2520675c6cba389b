"""Neural-ODE classifiers (Sparse Flows §4.6): the model against independent computations."""

from __future__ import annotations

import math

import torch

from pipeline_lib.classifier import ClassifierConfig, accuracy, build_classifier
from pipeline_lib.flows import SolverConfig
from pipeline_lib.pruning import count_parameters, prune_structured

TIGHT = SolverConfig(method="dopri5", rtol=1e-10, atol=1e-10)


def _classifier(hidden=(16,), seed=0, solver=TIGHT, activation="tanh"):
    torch.manual_seed(seed)
    cfg = ClassifierConfig(dim=2, hidden_dims=hidden, activation=activation, solver=solver)
    model = build_classifier(cfg).double()
    with torch.no_grad():  # a field strong enough to move the points
        for p in model.parameters():
            p.mul_(2.0)
    return model


def _field_by_hand(model):
    """f(z) = W_L act(... act(W_1 z + b_1) ...) + b_L from the weights, written out."""
    layers = [layer.linear for layer in model.field.net.layers]
    weights = [(m.weight.detach().clone(), m.bias.detach().clone()) for m in layers]

    def f(z):
        h = z
        for i, (w, b) in enumerate(weights):
            h = h @ w.T + b
            if i < len(weights) - 1:
                h = torch.tanh(h)
        return h

    return f


def test_logits_are_the_state_at_T_of_an_independent_rk4_integration():
    model = _classifier()
    x = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    f, z, steps = _field_by_hand(model), x.clone(), 2000
    h = 1.0 / steps
    for _ in range(steps):  # classical RK4, autonomous field, t from 0 to 1
        k1 = f(z)
        k2 = f(z + h / 2 * k1)
        k3 = f(z + h / 2 * k2)
        k4 = f(z + h * k3)
        z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    with torch.no_grad():
        logits = model(x)
    assert (logits - x).abs().max() > 0.1  # the flow moves the points
    torch.testing.assert_close(logits, z, rtol=0, atol=1e-8)
    # accuracy is the share of points whose larger logit is their label's, counted by hand
    labels = torch.tensor([i % 2 for i in range(50)])
    hits = sum(1 for i in range(50) if (z[i, 1] > z[i, 0]) == bool(labels[i]))
    assert accuracy(logits, labels) == hits / 50
    assert model.nfe > 0 and model.config.T == 1.0


def test_released_settings_and_adjoint_gradients():
    cfg = ClassifierConfig(dim=2)
    assert cfg.hidden_dims == (128,) and cfg.activation == "tanh"
    assert (cfg.solver.method, cfg.solver.rtol, cfg.solver.atol, cfg.solver.adjoint) == (
        "dopri5", 1e-4, 1e-4, True,
    )  # fmt: skip
    assert count_parameters(build_classifier(cfg))[0] == 2 * 128 + 128 + 128 * 2 + 2
    assert ClassifierConfig.from_dict(cfg.to_dict()) == cfg
    # the adjoint gradient of the cross-entropy equals backprop through the solver
    x = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = (x[:, 0] > 0).long()
    grads = []
    for adjoint in (False, True):
        model = _classifier(
            solver=SolverConfig(method="dopri5", rtol=1e-9, atol=1e-9, adjoint=adjoint)
        )
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert (grads[0] - grads[1]).norm() <= 1e-5 * grads[0].norm()


def test_structured_pruned_classifier_equals_a_physically_smaller_network():
    """Removing a neuron deletes it: the masked classifier gives the logits and NFE of one
    built with only the surviving neurons (their rows, biases and input columns)."""
    model = _classifier(hidden=(16, 12), seed=3)
    prune_structured(model, 0.5)
    layers = [layer.linear for layer in model.field.net.layers]
    rows = [(m.weight_mask != 0).any(dim=1) for m in layers]
    live = (int(rows[0].sum()), int(rows[1].sum()))
    assert 0 < live[0] < 16 and 0 < live[1] < 12
    small = _classifier(hidden=live, seed=4)
    cols = [torch.ones(2, dtype=torch.bool), rows[0], rows[1]]
    with torch.no_grad():
        for big, little, r, c in zip(layers, small.field.net.layers, rows, cols, strict=True):
            little.linear.weight.copy_(big.weight[r][:, c])
            little.linear.bias.copy_(big.bias[r])
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    n0, m0 = model.nfe, small.nfe
    with torch.no_grad():
        a, b = model(x), small(x)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert model.nfe - n0 == small.nfe - m0
    assert not math.isnan(float(a.sum()))


def test_concentric_is_the_released_classification_set():
    """ToyConcentric: 1,024 points, half on each circle (radii 0.75 and 1.5 before the scalar
    standardization, ratio 2), the inner one labelled 1."""
    from pipeline_lib.data.toy import generate_toy

    splits = generate_toy("concentric", seed=0, noise=0.0)
    assert splits.train.shape == (1024, 2) and splits.test.shape == (512, 2)
    raw = splits.train.double() * splits.std + splits.mean
    radius = raw.norm(dim=1)
    inner = splits.train_labels == 1
    assert int(inner.sum()) == 512
    # float32 storage: radii recovered to ~1e-7 relative
    full = torch.full((512,), 1.0, dtype=torch.float64)
    torch.testing.assert_close(radius[inner], 0.75 * full, rtol=0, atol=1e-6)
    torch.testing.assert_close(radius[~inner], 1.5 * full, rtol=0, atol=1e-6)
    noisy = generate_toy("concentric", seed=0)  # default noise: N(0, 0.1²) per coordinate
    r = (noisy.train.double() * noisy.std + noisy.mean).norm(dim=1)
    inner = noisy.train_labels == 1
    assert abs(float(r[inner].mean()) - 0.75) < 0.02 and abs(float(r[~inner].mean()) - 1.5) < 0.02
