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
        logits = model.logits(x)
    assert (logits - x).abs().max() > 0.1  # the flow moves the points
    torch.testing.assert_close(logits, z, rtol=0, atol=1e-8)
    # accuracy is the share of points whose larger logit is their label's, counted by hand
    labels = torch.tensor([i % 2 for i in range(50)])
    hits = sum(1 for i in range(50) if (z[i, 1] > z[i, 0]) == bool(labels[i]))
    assert accuracy(logits, labels) == hits / 50
    assert model.nfe > 0 and model.config.T == 1.0


def test_released_settings_and_adjoint_gradients():
    cfg = ClassifierConfig(dim=2, hidden_dims=(128,))  # Table S1 "MOON": l2_h128
    assert cfg.activation == "tanh" and cfg.T == 1.0
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
        loss = torch.nn.functional.cross_entropy(model.logits(x), y)
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
        a, b = model.logits(x), small.logits(x)
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


def test_examples_give_the_cross_entropy_as_the_negative_log_likelihood():
    """Called on examples [x, y], the classifier returns log p(y | x): minus the
    cross-entropy of its logits, computed here by torch's own loss."""
    from pipeline_lib.classifier import labelled_examples, split_examples

    model = _classifier()
    x = torch.randn(40, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    labels = torch.arange(40) % 2
    examples = labelled_examples(x, labels)
    assert examples.shape == (40, 3)
    back_x, back_y = split_examples(examples)
    assert torch.equal(back_x, x) and torch.equal(back_y, labels)
    with torch.no_grad():
        out = model(examples)
        ce = torch.nn.functional.cross_entropy(model.logits(x), labels, reduction="none")
    torch.testing.assert_close(-out.log_prob, ce)
    assert out.nfe > 0 and out.z.shape == (40, 2)


def test_a_supervised_family_needs_labels_and_refuses_the_rnode_terms():
    import pytest

    from pipeline_lib.data import DataSplits
    from pipeline_lib.families import FAMILIES

    x = torch.randn(10, 2)
    plain = DataSplits(train=x, val=x, test=x, name="unlabelled")
    with pytest.raises(ValueError, match="needs class labels.*'unlabelled'"):
        FAMILIES["classifier"].examples(plain, "train")
    assert FAMILIES["ffjord"].examples(plain, "train") is plain.train
    with pytest.raises(ValueError, match="lambda_kinetic"):
        _classifier()(torch.zeros(3, 3, dtype=torch.float64), regularize=True)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.1.*got 0\.\.2"):
        _classifier()(torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 2.0]], dtype=torch.float64))


def test_a_tiny_classifier_learns_the_moons_in_seconds():
    """Through the pipeline's own training loop and data: > 95 % test accuracy."""
    from pipeline_lib.data.toy import generate_toy
    from pipeline_lib.families import FAMILIES
    from pipeline_lib.training import TrainConfig, train

    family = FAMILIES["classifier"]
    data = generate_toy("moons", seed=0)
    torch.manual_seed(0)
    solver = SolverConfig(method="rk4", step_size=0.25)
    model = family.build(ClassifierConfig(dim=2, hidden_dims=(32,), solver=solver))
    cfg = TrainConfig(lr=1e-2, weight_decay=1e-4, epochs=15, batch_size=128, device="cpu")
    result = train(model, family.examples(data, "train"), family.examples(data, "val"), cfg)
    assert result.val_nll < 0.2  # validation cross-entropy in nats
    with torch.no_grad():
        assert accuracy(model.logits(data.test), data.test_labels) > 0.95


def test_hessian_of_the_cross_entropy_equals_an_independent_dense_hessian():
    """The Hessian operator, applied to a classifier, against torch.func's dense Hessian of
    the cross-entropy of an RK4 integration written out here, at the same parameters. The
    classifier trains with the adjoint (the released setting), which the operator must switch
    off to differentiate twice."""
    from torch.func import functional_call, hessian

    from pipeline_lib.classifier import labelled_examples
    from pipeline_lib.evaluation.hessian import HessianOperator

    solver = SolverConfig(method="rk4", step_size=0.25, adjoint=True)
    model = _classifier(hidden=(3,), solver=solver)
    x = torch.randn(30, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    labels = (x[:, 0] > 0).long()
    names = [n for n, _ in model.named_parameters()]
    flat0 = torch.cat([p.detach().flatten() for _, p in model.named_parameters()])
    shapes = [p.shape for _, p in model.named_parameters()]

    def loss(flat):
        params, i = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            params[name] = flat[i : i + shape.numel()].reshape(shape)
            i += shape.numel()

        def f(z):
            return functional_call(model.field.net, {k.removeprefix("field.net."): v
                                   for k, v in params.items()}, (torch.zeros(()), z))  # fmt: skip

        z, h = x, 0.25
        for _ in range(4):  # torchdiffeq's "rk4" is Kutta's 3/8 rule
            k1 = f(z)
            k2 = f(z + h * k1 / 3)
            k3 = f(z + h * (k2 - k1 / 3))
            k4 = f(z + h * (k1 - k2 + k3))
            z = z + h * (k1 + 3 * k2 + 3 * k3 + k4) / 8
        return torch.nn.functional.cross_entropy(z, labels)

    dense = hessian(loss)(flat0)
    op = HessianOperator(model, labelled_examples(x, labels))
    columns = torch.stack([op(e) for e in torch.eye(op.numel, dtype=torch.float64)], dim=1)
    assert abs(op.loss_value - float(loss(flat0))) < 1e-12
    torch.testing.assert_close(columns, dense, rtol=1e-7, atol=1e-9)
