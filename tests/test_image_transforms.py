"""FFJORD's image pre-processing (§4.3) against independent computations."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline_lib.flows.images import (
    bits_per_dim_of_images,
    dequantize,
    inverse_logit_transform,
    logit_transform,
    random_hflip,
    squeeze,
    unsqueeze,
)

GEN = torch.Generator().manual_seed(0)


def test_squeeze_and_unsqueeze_are_inverses_in_ffjords_order():
    x = torch.randn(3, 2, 8, 6, generator=GEN)
    s = squeeze(x)
    assert s.shape == (3, 8, 4, 3)
    torch.testing.assert_close(unsqueeze(s), x, rtol=0, atol=0)
    # channel c·4 + 2·i + j of the squeezed image holds pixel (2h + i, 2w + j) of channel c
    for c, i, j, h, w in [(0, 0, 0, 0, 0), (1, 1, 0, 2, 1), (1, 1, 1, 3, 2)]:
        assert s[1, c * 4 + 2 * i + j, h, w] == x[1, c, 2 * h + i, 2 * w + j]
    with pytest.raises(ValueError, match="divisible"):
        squeeze(torch.zeros(1, 1, 5, 4))


def test_logit_log_determinant_matches_autograd():
    x = torch.rand(2, 1, 3, 3, generator=GEN, dtype=torch.float64)
    y, logdet = logit_transform(x, alpha=0.05)
    for n in range(2):  # elementwise map: the Jacobian is diagonal
        jac = torch.autograd.functional.jacobian(
            lambda v: logit_transform(v.reshape(1, 1, 3, 3), alpha=0.05)[0].flatten(),
            x[n].flatten(),
        )
        assert torch.count_nonzero(jac - torch.diag(torch.diagonal(jac))) == 0
        expected = torch.slogdet(jac).logabsdet
        assert abs(float(logdet[n]) - float(expected)) < 1e-10
    torch.testing.assert_close(inverse_logit_transform(y, alpha=0.05), x)


def test_bits_per_dim_from_an_independent_log_likelihood():
    """A standard normal density on y = logit(x): log p(x) summed by hand in float64, then
    bits/dim = −(log p(x)/D − log 256)/log 2; the uniform density on [0, 1)^D gives 8 bits."""
    x = dequantize(torch.randint(0, 256, (4, 1, 2, 2), dtype=torch.uint8, generator=GEN))
    y, logdet = logit_transform(x.double())
    log_py = (-0.5 * y**2 - 0.5 * math.log(2 * math.pi)).reshape(4, -1).sum(1)
    got = bits_per_dim_of_images(log_py + logdet, 4)
    for n in range(4):
        total = 0.0
        for v in x[n].flatten().double().tolist():
            s = 1e-6 + (1 - 2e-6) * v
            yv = math.log(s / (1 - s))
            total += -0.5 * yv * yv - 0.5 * math.log(2 * math.pi)
            total += math.log(1 - 2e-6) - math.log(s * (1 - s))
        assert abs(float(got[n]) - (-(total / 4 - math.log(256)) / math.log(2))) < 1e-9
    assert float(bits_per_dim_of_images(torch.zeros(1), 784)) == pytest.approx(8.0)


def test_dequantization_stays_within_each_pixels_bin_and_flips_mirror():
    k = torch.randint(0, 256, (500, 1, 4, 4), dtype=torch.uint8, generator=GEN)
    x = dequantize(k, generator=torch.Generator().manual_seed(1))
    assert bool(((x * 256).floor() == k.float()).all()) and x.min() >= 0 and x.max() < 1
    with pytest.raises(TypeError, match="uint8"):
        dequantize(x)
    images = torch.arange(2 * 1 * 2 * 3).reshape(2, 1, 2, 3)
    flipped = random_hflip(images.repeat(20, 1, 1, 1), torch.Generator().manual_seed(0))
    mirrored = [bool((f == images[i % 2].flip(-1)).all()) for i, f in enumerate(flipped)]
    kept = [bool((f == images[i % 2]).all()) for i, f in enumerate(flipped)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True)) and 5 < sum(mirrored) < 35
