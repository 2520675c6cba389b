"""FFJORD's multiscale image flow (§4.3): architecture, parameter counts, inversion, density."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline_lib.flows import SolverConfig
from pipeline_lib.flows.multiscale import RELEASED, MultiscaleConfig, build_multiscale
from pipeline_lib.pruning import count_parameters, prunable_layers

TIGHT = SolverConfig(method="dopri5", rtol=1e-8, atol=1e-8)
CV = SolverConfig(method="dopri5", rtol=1e-6, atol=1e-6)


def _ffjord_count(channels_per_block: list[int], hidden=(64, 64, 64)) -> int:
    """Weights and biases of FFJORD's ODENVP counted by hand: per block, 3×3 convolutions
    with one extra (time) input channel, c → hidden… → c (FFJORD also counts one end-time
    scalar per block, which its gradient cut leaves untrained)."""
    total = 0
    for c in channels_per_block:
        dims = (c, *hidden, c)
        total += sum((a + 1) * b * 9 + b for a, b in zip(dims[:-1], dims[1:], strict=True))
    return total


def test_released_models_have_the_published_parameter_counts():
    mnist = build_multiscale(MultiscaleConfig(dim=(1, 28, 28), **RELEASED))
    # 3 scales: 2 blocks on 1×28², squeeze, 2 on 4×14²; 2 on 2×14², squeeze, 2 on 8×7²; 2 on 4×7²
    assert mnist.n_scales == 3
    assert count_parameters(mnist)[0] == _ffjord_count([1, 1, 4, 4, 2, 2, 8, 8, 4, 4]) == 800_636
    cifar = build_multiscale(MultiscaleConfig(dim=(3, 32, 32), **RELEASED))
    blocks = [3, 3, 12, 12, 6, 6, 24, 24, 12, 12, 48, 48, 24, 24]
    assert cifar.n_scales == 4 and count_parameters(cifar)[0] == _ffjord_count(blocks) == 1_358_868
    # Table 3 / S9-S10: 801K and 1.36M
    assert round(count_parameters(mnist)[0], -3) == 801_000
    assert round(count_parameters(cifar)[0], -4) == 1_360_000
    convs = prunable_layers(mnist)
    assert len(convs) == 10 * 4 and all(isinstance(m, torch.nn.Conv2d) for _, m in convs)
    assert sum(getattr(m, "is_output_layer", False) for _, m in convs) == 10


def small(train_T=False, solver=TIGHT, trace="exact"):
    torch.manual_seed(0)
    cfg = MultiscaleConfig(
        dim=(1, 8, 8), hidden_dims=(4,), num_blocks=1, train_T=train_T, trace=trace,
        solver=solver,
    )  # fmt: skip
    flow = build_multiscale(cfg).double()
    with torch.no_grad():  # a field strong enough to move the points
        for p in flow.parameters():
            p.mul_(2.0)
    return flow


def test_the_flow_inverts_and_sampling_lands_in_the_unit_cube():
    flow = small()
    x = 0.1 + 0.8 * torch.rand(
        3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        out = flow(x)
        assert out.z.shape == (3, 64)
        back = flow.inverse(out.z)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-6)
    with torch.no_grad():
        images = flow.sample(4, generator=torch.Generator().manual_seed(2))
    assert images.shape == (4, 1, 8, 8) and 0 <= float(images.min()) <= float(images.max()) <= 1


def test_log_probability_is_the_change_of_variables_of_the_whole_map():
    """log p(x) against an independent computation: the standard normal density of the
    forward map's output plus the log-determinant of its Jacobian, by autograd on an 8×8 image
    (two scales: squeeze and factor-out included; 64 dimensions), minus 64·log 256 for the
    8-bit quantization."""
    torch.manual_seed(0)
    cfg = MultiscaleConfig(dim=(1, 8, 8), hidden_dims=(3,), num_blocks=1,
                           train_T=False, trace="exact", solver=CV)  # fmt: skip
    flow = build_multiscale(cfg).double()
    assert flow.n_scales == 2
    with torch.no_grad():
        for p in flow.parameters():
            p.mul_(2.0)
    g = torch.Generator().manual_seed(3)
    x = 0.2 + 0.6 * torch.rand(1, 1, 8, 8, dtype=torch.float64, generator=g)
    with torch.no_grad():
        got = flow(x).log_prob
    # the map x -> z does not depend on how the divergence is estimated: the cheap one here
    jac = torch.autograd.functional.jacobian(
        lambda v: flow(v.reshape(1, 1, 8, 8), trace="hutchinson").z[0], x.flatten()
    )
    z = flow(x).z[0].detach()
    expected = -0.5 * (z**2).sum() - 32 * math.log(2 * math.pi) + torch.slogdet(jac).logabsdet
    assert abs(float(got[0]) - (float(expected) - 64 * math.log(256))) < 1e-4


def test_training_images_are_flipped_and_evaluation_images_are_not():
    """With ``hflip`` (CIFAR-10) the images a training-mode call dequantizes are the batch's,
    about half of them mirrored; in evaluation mode they are the batch's as they are."""
    cfg = MultiscaleConfig(dim=(1, 8, 8), hidden_dims=(3,), hflip=True)
    flow = build_multiscale(cfg)
    k = torch.randint(
        0, 256, (1, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    batch = k.repeat(40, 1, 1, 1)

    def pixels(train: bool) -> torch.Tensor:
        flow.train(train)
        x = flow._prepare(batch, torch.Generator().manual_seed(2))
        return (x * 256).floor().to(torch.uint8)

    assert torch.equal(pixels(False), batch)
    seen = pixels(True)
    mirrored = [bool(torch.equal(im, k[0].flip(-1))) for im in seen]
    kept = [bool(torch.equal(im, k[0])) for im in seen]
    assert all(m or p for m, p in zip(mirrored, kept, strict=True))
    assert 5 < sum(mirrored) < 35


def test_uint8_images_are_dequantized_with_the_given_generator():
    flow = small(trace="hutchinson")
    k = torch.randint(
        0, 256, (2, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(4)
    )
    with torch.no_grad():
        a = flow(k, generator=torch.Generator().manual_seed(5)).log_prob
        b = flow(k, generator=torch.Generator().manual_seed(5)).log_prob
        c = flow(k, generator=torch.Generator().manual_seed(6)).log_prob
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert bool((a < 0).all())  # the log-probability of a discrete image


def test_configuration_round_trip_and_checks():
    cfg = MultiscaleConfig(dim=(3, 32, 32), hflip=True)
    assert MultiscaleConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="too small"):
        build_multiscale(MultiscaleConfig(dim=(1, 2, 2)))
    with pytest.raises(ValueError, match="dim is not set"):
        build_multiscale(MultiscaleConfig())


def test_the_flow_inverts_from_the_base_side():
    """sample → log_prob: base points z mapped to images, then back, give the same z."""
    flow = small()
    z = torch.randn(2, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        x = flow.inverse(z)
        again = flow(x).z
    torch.testing.assert_close(again, z, rtol=0, atol=1e-5)


def test_structured_pruned_conv_field_equals_a_physically_smaller_network():
    """Filter pruning of a block's field: the masked field gives the output of one built with
    only the surviving filters (their kernels and biases, and the next convolution's input
    channels; channel 0 of every input is the time)."""
    from pipeline_lib.flows.multiscale import ConvODENet
    from pipeline_lib.pruning import attach_masks, prune_structured

    torch.manual_seed(0)
    net = attach_masks(ConvODENet(3, (8, 6), "softplus")).double()
    prune_structured(net, 0.5)
    convs = [layer.conv for layer in net.layers]
    rows = [(c.weight_mask != 0).flatten(1).any(dim=1) for c in convs]
    live = (int(rows[0].sum()), int(rows[1].sum()))
    assert 0 < live[0] < 8 and 0 < live[1] < 6 and bool(rows[2].all())  # outputs stay
    small_net = ConvODENet(3, live, "softplus").double()
    keep_in = [torch.ones(4, dtype=torch.bool)]
    keep_in += [torch.cat([torch.ones(1, dtype=torch.bool), r]) for r in rows[:2]]
    with torch.no_grad():
        for big, little, r, c in zip(convs, small_net.layers, rows, keep_in, strict=True):
            little.conv.weight.copy_(big.weight[r][:, c])
            little.conv.bias.copy_(big.bias[r])
    z = torch.randn(2, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    t = torch.tensor(0.3, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(net(t, z), small_net(t, z), rtol=0, atol=1e-12)
