"""Tests for pipeline_lib.pruning, each checked against an independent brute-force computation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from pipeline_lib.pruning import (
    EarlyStopping,
    apply_masks,
    attach_masks,
    count_parameters,
    keep_schedule,
    keep_schedule_to_target,
    mask_gradients,
    paper_toy_keep_schedule,
    prunable_density,
    prunable_layers,
    prune,
    prune_ratio,
    prune_structured,
    prune_unstructured,
)


class _Gated(nn.Module):
    """Linear layer with a time-gating layer that must stay dense (like concatsquash)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.layer = nn.Linear(dim_in, dim_out)
        self.hyper_gate = nn.Linear(1, dim_out)
        self.hyper_gate.prunable = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.ones(x.shape[0], 1)
        return self.layer(x) * torch.sigmoid(self.hyper_gate(t))


class _Field(nn.Module):
    """Small vector field: three prunable linear layers of different shapes + a dense gate."""

    def __init__(self, dim: int = 3, hidden: int = 7, hidden2: int = 5) -> None:
        super().__init__()
        self.l1 = _Gated(dim, hidden)
        self.l2 = nn.Linear(hidden, hidden2)
        self.out = nn.Linear(hidden2, dim)
        self.out.is_output_layer = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.l2(torch.tanh(self.l1(x)))))


def _field(seed: int = 0, **kwargs: int) -> _Field:
    torch.manual_seed(seed)
    model = _Field(**kwargs)
    with torch.no_grad():  # spread magnitudes so that every layer gets pruned somewhere
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    return model


def _flat(tensors: list[torch.Tensor]) -> np.ndarray:
    return np.concatenate([t.detach().cpu().numpy().ravel() for t in tensors])


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for _, m in prunable_layers(model)]


def _masks(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight_mask for _, m in prunable_layers(model)]


def _weights_kept(model: nn.Module, keep: float) -> int:
    """The released budget, counted by hand: round(keep · all parameters) minus every nonzero
    parameter that is not a prunable weight (biases, the dense gate), at least 0."""
    every = [p.detach() for p in model.parameters()]
    total = sum(p.numel() for p in every)
    weights = {id(w) for w in _weights(model)}
    others = sum(int((p != 0).sum()) for p in model.parameters() if id(p) not in weights)
    return max(0, round(keep * total) - others)


# ------------------------------------------------------------------------------ layers/masks


def test_prunable_layers_excludes_gates_and_is_deterministic():
    names = [name for name, _ in prunable_layers(_field())]
    assert names == ["l1.layer", "l2", "out"]
    assert names == [name for name, _ in prunable_layers(_field(seed=1))]


def test_attach_masks_is_idempotent_and_in_state_dict():
    model = attach_masks(_field())
    model.l2.weight_mask[0, 0] = 0.0
    attach_masks(model)  # must not reset existing masks
    assert model.l2.weight_mask[0, 0] == 0.0
    keys = model.state_dict().keys()
    for name in ("l1.layer", "l2", "out"):
        assert f"{name}.weight_mask" in keys and f"{name}.bias_mask" in keys
    assert "l1.hyper_gate.weight_mask" not in keys
    for _, m in prunable_layers(model):
        assert m.weight_mask.shape == m.weight.shape and m.weight_mask.dtype == m.weight.dtype


# ------------------------------------------------------------------------------ unstructured


def test_unstructured_prunes_globally_smallest_magnitudes():
    model = _field()
    biases = [p.detach().clone() for n, p in model.named_parameters() if n.endswith("bias")]
    gate = model.l1.hyper_gate.weight.detach().clone()
    flat = np.abs(_flat(_weights(model)))
    keep = 0.4
    n_pruned = len(flat) - _weights_kept(model, keep)
    expected = set(np.argsort(flat, kind="stable")[:n_pruned].tolist())

    prune_unstructured(model, keep)

    pruned = set(np.flatnonzero(_flat(_masks(model)) == 0).tolist())
    assert pruned == expected
    assert set(np.flatnonzero(_flat(_weights(model)) == 0).tolist()) == expected
    after = [p.detach() for n, p in model.named_parameters() if n.endswith("bias")]
    assert all(torch.equal(a, b) for a, b in zip(biases, after, strict=True))
    assert all(bool((m.bias_mask == 1).all()) for _, m in prunable_layers(model))
    assert torch.equal(model.l1.hyper_gate.weight, gate)


def test_unstructured_iterative_only_considers_unpruned_weights():
    model = _field()
    prune_unstructured(model, 0.6)
    pruned_before = _flat(_masks(model)) == 0
    # "retraining": perturb all weights, and let one pruned weight grow large without masking
    with torch.no_grad():
        for w in _weights(model):
            w.add_(0.5 * torch.randn_like(w))
    apply_masks(model)
    first_pruned = int(np.flatnonzero(pruned_before)[0])
    with torch.no_grad():
        sizes = [w.numel() for w in _weights(model)]
        layer = int(np.searchsorted(np.cumsum(sizes), first_pruned, side="right"))
        offset = first_pruned - int(np.sum(sizes[:layer]))
        _weights(model)[layer].view(-1)[offset] = 100.0

    flat = np.abs(_flat(_weights(model)))
    alive = np.flatnonzero(~pruned_before)
    keep = 0.3
    n_keep = _weights_kept(model, keep)
    order = alive[np.argsort(flat[alive], kind="stable")]
    expected = set(np.flatnonzero(pruned_before).tolist()) | set(
        order[: len(alive) - n_keep].tolist()
    )

    prune_unstructured(model, keep)

    pruned_after = _flat(_masks(model)) == 0
    assert set(np.flatnonzero(pruned_after).tolist()) == expected
    assert pruned_after.sum() == len(flat) - n_keep
    assert _flat(_weights(model))[first_pruned] == 0.0  # applied immediately


def test_unstructured_noop_when_keep_not_below_density():
    model = _field()
    prune_unstructured(model, 0.5)
    masks = [m.clone() for m in _masks(model)]
    prune_unstructured(model, 0.7)
    prune_unstructured(model, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(masks, _masks(model), strict=True))


def test_unstructured_budget_over_all_parameters_and_its_floor(caplog):
    """The released l2_h128 field (642 parameters, 130 of them biases): keep 0.21 leaves
    round(0.21 · 642) − 130 = 5 weights; keep 0.2 (budget 128 < 130 biases) prunes every
    weight and says so, as the released code's clipped budget does."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 128), nn.Sigmoid(), nn.Linear(128, 2))
    prune_unstructured(model, 0.21)
    assert count_parameters(model) == (642, 135)
    assert int(_flat(_masks(model)).sum()) == 5
    with caplog.at_level("WARNING", logger="sparseflows.pruning"):
        prune_unstructured(model, 0.2)
    assert count_parameters(model) == (642, 130)
    assert "cannot meet the budget of 128 of 642" in caplog.text


def test_unstructured_ties_are_deterministic_and_exact():
    def tied() -> nn.Module:
        model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2))
        with torch.no_grad():
            for w in _weights(model):
                w.copy_(torch.arange(w.numel()).remainder(3).reshape(w.shape).float())
        return model

    a, b = tied(), tied()
    prune_unstructured(a, 0.5)
    prune_unstructured(b, 0.5)
    assert all(torch.equal(x, y) for x, y in zip(_masks(a), _masks(b), strict=True))
    n_total = 4 * 6 + 6 * 2 + 6 + 2
    assert int(_flat(_masks(a)).sum()) == round(0.5 * n_total) - (6 + 2)
    # ties go to the earlier weight in prunable_layers order
    flat = _flat(_weights(tied()))
    n_kept = round(0.5 * n_total) - (6 + 2)
    expected = set(np.argsort(np.abs(flat), kind="stable")[: flat.size - n_kept].tolist())
    assert set(np.flatnonzero(_flat(_masks(a)) == 0).tolist()) == expected


# ------------------------------------------------------------------------------ structured


def _dead_rows(module: nn.Module) -> set[int]:
    return set(torch.nonzero((module.weight_mask == 0).all(dim=1)).squeeze(1).tolist())


@pytest.mark.parametrize("keep", [0.75, 0.5, 0.01])
def test_structured_prunes_lowest_l1_rows_and_meets_the_budget(keep):
    model = _field(hidden=8, hidden2=6)
    out_weight = model.out.weight.detach().clone()
    scores = {n: m.weight.detach().abs().sum(dim=1) for n, m in prunable_layers(model)}
    biases = {n: m.bias.detach().clone() for n, m in prunable_layers(model)}
    total = count_parameters(model)[0]

    prune_structured(model, keep)

    nonzero = count_parameters(model)[1]
    for name, m in prunable_layers(model):
        if name == "out":  # never pruned; _Field's layers are not a known chain: no columns
            assert torch.equal(m.weight, out_weight) and bool((m.weight_mask == 1).all())
            continue
        dead = _dead_rows(m)
        alive = sorted(set(range(m.weight.shape[0])) - dead)
        assert alive, "at least one neuron per layer stays"
        if dead:  # the removed rows are the lowest-l1 ones of their layer
            assert max(scores[name][list(dead)]) <= min(scores[name][alive])
        for row in dead:
            assert bool((m.weight[row] == 0).all())
        assert torch.equal(m.bias, biases[name])  # biases stay, as in the released code
    minimum = all(len(_dead_rows(m)) == m.weight.shape[0] - 1 for n, m in prunable_layers(model)
                  if n != "out")  # fmt: skip
    budget = round(keep * total)
    assert nonzero <= budget or minimum
    assert bool((model.l1.hyper_gate.weight != 0).all())


def test_structured_iterative_uses_masked_weights_and_alive_rows():
    model = _field(hidden=8, hidden2=6)
    prune_structured(model, 0.6)
    dead_before = _dead_rows(model.l2)
    with torch.no_grad():  # pruned rows regrow large without masking: must stay pruned
        model.l2.weight[list(dead_before)] = 50.0
    prune_structured(model, 0.4)
    assert dead_before <= _dead_rows(model.l2)
    assert bool((model.l2.weight[list(dead_before)] == 0).all())


def test_structured_conv_filters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1))
    model[1].is_output_layer = True
    l1 = model[0].weight.detach().abs().sum(dim=(1, 2, 3)).numpy()
    # 260 parameters; keep 0.4 -> 104: 8 biases + 36 of the output layer + 2 filters of 27
    expected = set(np.argsort(l1, kind="stable")[:6].tolist())
    prune(model, "structured", 0.4)
    dead = (model[0].weight_mask == 0).flatten(1).all(dim=1)
    assert set(torch.nonzero(dead).squeeze(1).tolist()) == expected
    assert count_parameters(model)[1] == 2 * 27 + 8 + 36
    assert bool((model[1].weight_mask == 1).all())
    assert model(torch.randn(1, 3, 6, 6)).shape == (1, 4, 4, 4)


def _mlp_flow(hidden, seed=0, layer_type="mlp"):
    from pipeline_lib.flows import FlowConfig, SolverConfig, build_flow

    torch.manual_seed(seed)
    solver = SolverConfig(method="dopri5", rtol=1e-8, atol=1e-8)
    cfg = FlowConfig(dim=2, hidden_dims=hidden, layer_type=layer_type, activation="sigmoid",
                     trace="exact", solver=solver)  # fmt: skip
    return build_flow(cfg).double()


def test_structured_pruned_flow_equals_a_physically_smaller_network():
    """Removing neurons = deleting them: the masked flow gives the same log-densities and NFE
    as a flow built with only the surviving neurons (their rows, biases and input columns)."""
    flow = _mlp_flow((16, 12))
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    prune_structured(flow, 0.45)
    layers = [layer.linear for layer in flow.blocks[0].dynamics.net.layers]
    rows = [(m.weight_mask != 0).any(dim=1) for m in layers]
    assert 0 < int(rows[0].sum()) < 16 and 0 < int(rows[1].sum()) < 12
    small = _mlp_flow((int(rows[0].sum()), int(rows[1].sum())))
    cols = [torch.ones(2, dtype=torch.bool), rows[0], rows[1]]
    with torch.no_grad():
        for big, little, r, c in zip(
            layers, small.blocks[0].dynamics.net.layers, rows, cols, strict=True
        ):
            little.linear.weight.copy_(big.weight[r][:, c])
            little.linear.bias.copy_(big.bias[r])
    x = torch.randn(64, 2, dtype=torch.float64)
    a, b = flow(x), small(x)
    assert torch.allclose(a.log_prob, b.log_prob, atol=1e-12, rtol=0)
    assert a.nfe == b.nfe
    # the removed neurons' input columns are masked in the next layer, the output layer's too
    assert bool((layers[2].weight_mask[:, ~rows[1]] == 0).all())
    assert bool((layers[1].weight_mask[:, ~rows[0]] == 0).all())


@pytest.mark.parametrize("hidden", [(128,), (64, 64, 64)])
def test_structured_rounds_meet_their_budget_within_one_neuron(hidden):
    """Table S1's released models over the paper's toy schedule: every round's nonzero count
    is at most round(keep · total) and below it by less than one neuron's parameters (a row,
    its bias and its column in the next layer), or at one neuron per layer."""
    flow = _mlp_flow(hidden)
    layers = [layer.linear for layer in flow.blocks[0].dynamics.net.layers]
    total = count_parameters(flow)[0]
    one_neuron = max(
        m.in_features + 1 + n.out_features for m, n in zip(layers, layers[1:], strict=False)
    )
    for keep in paper_toy_keep_schedule():
        prune_structured(flow, keep)
        nonzero = count_parameters(flow)[1]
        live = [int((m.weight_mask != 0).any(dim=1).sum()) for m in layers[:-1]]
        budget = round(keep * total)
        if all(n == 1 for n in live):
            assert nonzero >= budget - one_neuron
            continue
        assert budget - one_neuron < nonzero <= budget, (keep, nonzero, budget)


def test_structured_removes_the_concatsquash_time_path():
    flow = _mlp_flow((8,), layer_type="concatsquash")
    prune_structured(flow, 0.5)
    first = flow.blocks[0].dynamics.net.layers[0]
    dead = (first.linear.weight_mask == 0).all(dim=1)
    assert bool(dead.any())
    assert bool((first.linear.bias[dead] == 0).all())
    assert bool((first.hyper_gate.weight[dead] == 0).all())
    assert bool((first.hyper_bias.weight[dead] == 0).all())


def test_invalid_arguments_raise():
    model = _field()
    with pytest.raises(ValueError, match="keep"):
        prune_unstructured(model, 1.5)
    with pytest.raises(ValueError, match="unknown pruning method"):
        prune(model, "random", 0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no prunable layers"):
        prune_unstructured(nn.Sequential(nn.Tanh()), 0.5)


# ------------------------------------------------------------------------------ masks in training


@pytest.mark.parametrize("method", ["unstructured", "structured"])
@pytest.mark.parametrize("optimizer", [torch.optim.Adam, torch.optim.AdamW])
def test_masks_survive_optimizer_steps(method, optimizer):
    model = _field(hidden=8, hidden2=6)
    prune(model, method, 0.5)
    pruned_w = [m.weight_mask == 0 for _, m in prunable_layers(model)]
    pruned_b = [m.bias_mask == 0 for _, m in prunable_layers(model)]
    opt = optimizer(model.parameters(), lr=1e-2, weight_decay=0.1)
    x = torch.randn(16, 3)
    for step in range(5):
        opt.zero_grad()
        loss = model(x).pow(2).sum() + sum(p.pow(2).sum() for p in model.parameters())
        loss.backward()
        if step % 2 == 0:
            mask_gradients(model)
            for (_, m), pw in zip(prunable_layers(model), pruned_w, strict=True):
                assert bool((m.weight.grad[pw] == 0).all())
        opt.step()
        apply_masks(model)
        for (_, m), pw, pb in zip(prunable_layers(model), pruned_w, pruned_b, strict=True):
            assert bool((m.weight[pw] == 0).all()) and bool((m.bias[pb] == 0).all())
    assert prunable_density(model) == pytest.approx(
        1 - sum(int(p.sum()) for p in pruned_w) / sum(p.numel() for p in pruned_w)
    )


@pytest.mark.parametrize("method", ["unstructured", "structured"])
def test_masks_survive_save_and_load(tmp_path, method):
    model = _field(hidden=8, hidden2=6)
    prune(model, method, 0.4)
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)

    fresh = attach_masks(_field(seed=7, hidden=8, hidden2=6))
    fresh.load_state_dict(torch.load(path, weights_only=True))
    for (_, a), (_, b) in zip(prunable_layers(model), prunable_layers(fresh), strict=True):
        assert torch.equal(a.weight_mask, b.weight_mask)
        assert torch.equal(a.bias_mask, b.bias_mask)
        assert torch.equal(a.weight, b.weight)
    assert prunable_density(fresh) == prunable_density(model)
    assert count_parameters(fresh) == count_parameters(model)


# ------------------------------------------------------------------------------ schedules


@pytest.mark.parametrize(("pr", "rounds"), [(0.1, 29), (0.25, 9), (0.5, 6), (0.2, 12)])
def test_density_after_rounds_matches_geometric_schedule(pr, rounds):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 64), nn.Linear(64, 2))
    n_weights, n_biases = 2 * 64 + 64 * 64 + 64 * 2, 64 + 64 + 2
    schedule = keep_schedule(pr, rounds)
    assert len(schedule) == rounds
    for r, keep in enumerate(schedule, start=1):
        assert keep == pytest.approx((1 - pr) ** r)
        prune_unstructured(model, keep)
        # the budget is met exactly over all parameters, until the biases alone exceed it
        # (0.5**6 keeps 70 of 4482 < 130 biases: every weight goes, as in the released code)
        budget = round((1 - pr) ** r * (n_weights + n_biases))
        assert count_parameters(model) == (n_weights + n_biases, max(budget, n_biases))
        assert prunable_density(model) * n_weights == pytest.approx(max(budget - n_biases, 0))
        assert prune_ratio(model) == pytest.approx(1 - prunable_density(model))


def test_paper_toy_keep_schedule():
    schedule = paper_toy_keep_schedule()
    assert len(schedule) == 29
    assert schedule[0] == pytest.approx(0.8)
    assert schedule[19] == pytest.approx(0.2)
    assert schedule[20] == pytest.approx(0.18)
    assert schedule[-1] == pytest.approx(0.02)
    assert all(a > b for a, b in zip(schedule, schedule[1:], strict=False))
    ratios = [b / a for a, b in zip(schedule[:20], schedule[1:20], strict=False)]
    assert ratios == pytest.approx([0.25 ** (1 / 19)] * 19)
    assert np.diff(schedule[20:]) == pytest.approx([-0.02] * 8)


def test_paper_images_keep_schedule():
    """The released image schedule: 12 keep ratios, geometric from 0.80 to 0.05 (a factor
    (0.05 / 0.8)^(1/11) ≈ 0.777 per round, Table S3's "PR 22 %")."""
    from pipeline_lib.pruning import paper_images_keep_schedule

    schedule = paper_images_keep_schedule()
    assert len(schedule) == 12 and schedule[0] == pytest.approx(0.8)
    assert schedule[-1] == pytest.approx(0.05)
    factor = (0.05 / 0.8) ** (1 / 11)
    assert [b / a for a, b in zip(schedule, schedule[1:], strict=False)] == pytest.approx(
        [factor] * 11
    )
    assert 1 - factor == pytest.approx(0.22, abs=0.005)


def test_keep_schedule_to_target():
    # brute force: smallest n with 0.9**n <= 0.1 is 22 (0.9**21 = 0.109..., 0.9**22 = 0.098...)
    n = next(n for n in range(1, 100) if 0.9**n <= 0.1)
    assert keep_schedule_to_target(0.1, 0.9) == pytest.approx(keep_schedule(0.1, n))
    assert len(keep_schedule_to_target(0.1, 0.19)) == 2  # 1 - 0.81 hits the target exactly
    assert len(keep_schedule_to_target(0.5, 0.75)) == 2
    assert keep_schedule_to_target(0.2, 0.0) == []
    with pytest.raises(ValueError):
        keep_schedule_to_target(0.2, 1.0)
    with pytest.raises(ValueError):
        keep_schedule(0.0, 3)


# ------------------------------------------------------------------------------ measurements


def test_count_parameters_matches_manual_count():
    model = _field(hidden=7, hidden2=5)
    manual_total = (3 * 7 + 7) + (1 * 7 + 7) + (7 * 5 + 5) + (5 * 3 + 3)
    assert count_parameters(model) == (manual_total, manual_total)
    prune_unstructured(model, 0.5)
    n_prunable = 3 * 7 + 7 * 5 + 5 * 3
    n_kept = round(0.5 * manual_total) - (manual_total - n_prunable)
    n_pruned = n_prunable - n_kept
    assert count_parameters(model) == (manual_total, round(0.5 * manual_total))
    assert prunable_density(model) == pytest.approx(n_kept / n_prunable)
    assert prune_ratio(model) == pytest.approx(n_pruned / n_prunable)


# ------------------------------------------------------------------------------ early stopping


def _run(stopper: EarlyStopping, losses: list[float]) -> list[bool]:
    return [stopper.update(v) for v in losses]


def test_early_stopping_patience_one():
    stopper = EarlyStopping(patience=1)
    assert _run(stopper, [1.0, 0.9, 0.8, 0.85]) == [False, False, False, True]
    assert stopper.best == 0.8 and stopper.best_index == 2


def test_early_stopping_patience_two():
    stopper = EarlyStopping(patience=2)
    losses = [1.0, 0.9, 0.95, 0.8, 0.85, 0.86]
    assert _run(stopper, losses) == [False, False, False, False, False, True]
    assert stopper.best == 0.8 and stopper.best_index == 3


def test_early_stopping_nan_and_min_delta():
    assert _run(EarlyStopping(patience=1), [1.0, math.nan]) == [False, True]
    stopper = EarlyStopping(patience=2)
    assert _run(stopper, [1.0, math.nan, 0.9]) == [False, False, False]
    assert stopper.best == 0.9
    assert _run(EarlyStopping(patience=1), [math.nan]) == [True]
    assert _run(EarlyStopping(patience=1, min_delta=0.01), [1.0, 0.995]) == [False, True]
    assert _run(EarlyStopping(patience=1, min_delta=0.01), [1.0, 0.98]) == [False, False]


def test_early_stopping_state_roundtrip():
    stopper = EarlyStopping(patience=2, min_delta=0.001)
    _run(stopper, [1.0, 0.9, 0.95])
    state = json.loads(json.dumps(stopper.to_dict(), allow_nan=False))
    restored = EarlyStopping.from_dict(state)
    assert restored == stopper
    assert restored.update(0.97) is True and stopper.update(0.97) is True
    with pytest.raises(ValueError, match="unknown EarlyStopping state keys"):
        EarlyStopping.from_dict({"patience": 1, "bogus": 3})


def test_structured_stops_at_one_neuron_per_layer_and_says_so(caplog):
    """The released Gaussians model keeps its 128 biases: one neuron keeps 2 + 2 weights,
    all biases and the output bias, 134 of 642 parameters (79 % measured)."""
    flow = _mlp_flow((128,))
    with caplog.at_level("WARNING", logger="sparseflows.pruning"):
        prune_structured(flow, 0.02)
    assert count_parameters(flow) == (642, 134)
    assert "cannot meet the budget of 13 of 642 parameters" in caplog.text


def test_removed_concatsquash_time_path_stays_zero_while_retraining():
    from pipeline_lib.training import TrainConfig, train

    flow = _mlp_flow((8,), layer_type="concatsquash").float()
    prune_structured(flow, 0.5)
    first = flow.blocks[0].dynamics.net.layers[0]
    dead = (first.linear.weight_mask == 0).all(dim=1)
    x = torch.randn(256, 2)
    cfg = TrainConfig(optimizer="adamw", lr=1e-2, weight_decay=1e-2, epochs=2, batch_size=64,
                      grad_clip=1.0, divergence_nats=None)  # fmt: skip
    train(flow, x, x[:64], cfg)
    for param in (first.linear.bias, first.hyper_gate.weight, first.hyper_gate.bias,
                  first.hyper_bias.weight):  # fmt: skip
        assert bool((param[dead] == 0).all())
