"""Two-dimensional toy data sets for density estimation (Sparse Flows §4.1, Table S1, Fig. 5).

The three multi-modal sets of the paper follow the torchdyn generators its toy experiments
were built on (Sparse Flows §S9), with the sizes of its data configuration; FFJORD's 2-D sets
(Grathwohl et al. 2019, ``lib/toy_data.py``) and the moons and concentric circles of the
classification experiment (Sparse Flows §4.6, torchdyn's generators as the released code draws
them) are reimplemented from their documented behaviour.

=================  ========================================================  ==================
name               geometry (raw coordinates)                                default size
=================  ========================================================  ==================
``gaussians``      6 isotropic Gaussians, std 0.5, centers on a circle of     2,730 per mode
                   radius 4 at angles 2πk/6, k = 1..6                         (16,380 train)
``gaussianspiral`` 10 isotropic Gaussians along a spiral: center k at angle   1,638 per mode
                   2πk/6, k = 1..10 (6 per turn, i.e. 1.5 turns from 60° to   (16,380 train)
                   600°), radius linear from 4 down to 1, std linear from
                   0.3 down to 0.1
``spiral``         two spiral arms: angle t = √u·780° (u ~ U[0, 1)), point    16,384 per arm
                   (−t cos t, t sin t) + U[0, noise)² with noise 0.5; the     (32,768 train)
                   second arm is the first one mirrored through the origin
``moons``          two interleaving half circles (outer: (cos s, sin s);      1,024
                   inner: (1 − cos s, 0.5 − sin s), s ∈ [0, π]) + (u, u),
                   u ~ U[0, 0.1) (torchdyn's, as the released ``ToyMoons``)
``8gaussians``     8 Gaussians, std 0.5/1.414, centers 4/1.414 · compass      16,384
                   directions, mode drawn uniformly per point
``pinwheel``       5 arms: radial N(1, 0.3²), tangential N(0, 0.1²), rotated  3,276 per arm
                   by −(2πk/5 + 0.25·exp(radial)), scaled by 2
``checkerboard``   uniform on the dark squares of a 4×4 board on [−4, 4]²     16,384
``circles``        two rings (radius 3 and 1.5, 0.5 · 3) + N(0, (0.08·3)²)    16,384
``2spirals``       two arms: angle t = √u·540°, point (−t cos t, t sin t) +   8,192 per arm
                   U[0, 0.5)², divided by 3, plus N(0, 0.1²)
``concentric``     classification set of §4.6 (torchdyn ``spheres``, the     1,024
                   released ``ToyConcentric``): uniform on circles of radius
                   0.75 (label 1) and 1.5 (label 0) + N(0, 0.1²)
=================  ========================================================  ==================

Labels are the mode (Gaussian component, spiral/pinwheel arm, moon, ring) where the data has
modes, ``None`` for ``checkerboard``. Every data set is drawn three times from independent
random streams spawned from ``seed`` (:class:`numpy.random.SeedSequence`): the training set,
a validation set and a test set, the latter two of half the training size (half the per-mode
count, rounded down, for per-mode sets) as in the paper's toy setup. All three are standardized
with the *scalar* mean and the *scalar* (population) standard deviation of the training set,
one number each over all coordinates; both are kept in :class:`DataSplits` ``mean``/``std``.
(The released classification sets standardize their training and test sets each with its own
statistics; here the training statistics standardize all splits, for every set.)

Example::

    splits = generate_toy("gaussians", seed=0)
    splits.train.shape                      # (16380, 2)
    centers, stds = toy_modes("gaussians", splits)   # in standardized coordinates
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from pipeline_lib.data.splits import DataSplits

__all__ = [
    "CLASSIFICATION_DATASETS",
    "GAUSSIAN_MODE_DATASETS",
    "TOY_DATASETS",
    "generate_toy",
    "toy_modes",
]

Sample = tuple[np.ndarray, np.ndarray | None]

# -- geometry of the data sets (the data set definitions, not tunable settings) --------------
GAUSSIANS_N_MODES = 6
GAUSSIANS_RADIUS = 4.0
GAUSSIANS_STD = 0.5

SPIRAL_N_MODES = 10
SPIRAL_MODES_PER_TURN = 6
SPIRAL_RADIUS = (4.0, 1.0)
SPIRAL_STD = (0.3, 0.1)

EIGHT_GAUSSIANS_SCALE = 4.0
EIGHT_GAUSSIANS_STD = 0.5
EIGHT_GAUSSIANS_SHRINK = 1.414  # FFJORD divides the samples by 1.414 (≈ √2)


def _gaussians_modes() -> tuple[np.ndarray, np.ndarray]:
    k = np.arange(1, GAUSSIANS_N_MODES + 1)
    angles = 2.0 * math.pi * k / GAUSSIANS_N_MODES
    centers = GAUSSIANS_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return centers, np.full(GAUSSIANS_N_MODES, GAUSSIANS_STD)


def _gaussianspiral_modes() -> tuple[np.ndarray, np.ndarray]:
    k = np.arange(1, SPIRAL_N_MODES + 1)
    angles = 2.0 * math.pi * k / SPIRAL_MODES_PER_TURN
    radii = np.linspace(*SPIRAL_RADIUS, SPIRAL_N_MODES)
    centers = radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return centers, np.linspace(*SPIRAL_STD, SPIRAL_N_MODES)


def _eight_gaussians_modes() -> tuple[np.ndarray, np.ndarray]:
    r = 1.0 / math.sqrt(2.0)
    unit = np.array(
        [(1, 0), (-1, 0), (0, 1), (0, -1), (r, r), (r, -r), (-r, r), (-r, -r)], dtype=np.float64
    )
    centers = unit * EIGHT_GAUSSIANS_SCALE / EIGHT_GAUSSIANS_SHRINK
    return centers, np.full(8, EIGHT_GAUSSIANS_STD / EIGHT_GAUSSIANS_SHRINK)


def _mixture(rng: np.random.Generator, modes: tuple[np.ndarray, np.ndarray], n: int) -> Sample:
    """``n`` points from each isotropic Gaussian mode, labelled by mode index."""
    centers, stds = modes
    labels = np.repeat(np.arange(len(centers)), n)
    x = centers[labels] + stds[labels, None] * rng.standard_normal((len(labels), 2))
    return x, labels


def _gaussians(rng: np.random.Generator, n: int, noise: float | None) -> Sample:
    return _mixture(rng, _gaussians_modes(), n)


def _gaussianspiral(rng: np.random.Generator, n: int, noise: float | None) -> Sample:
    return _mixture(rng, _gaussianspiral_modes(), n)


def _spiral(rng: np.random.Generator, n: int, noise: float | None) -> Sample:
    noise = 0.5 if noise is None else noise
    t = np.sqrt(rng.random(n)) * math.radians(780.0)
    arm = np.stack(
        [-np.cos(t) * t + rng.random(n) * noise, np.sin(t) * t + rng.random(n) * noise], axis=1
    )
    return np.concatenate([arm, -arm]), np.repeat(np.arange(2), n)


def _moons(rng: np.random.Generator, n: int, noise: float | None) -> Sample:
    """torchdyn's ``moons``, which the released classifier's ``ToyMoons`` draws (noise 0.1):
    the two half circles with one uniform shift U[0, noise) added to *both* coordinates of a
    point (``X += rand(n, 1) * noise``), not scikit-learn's Gaussian noise per coordinate."""
    noise = 0.1 if noise is None else noise
    n_out, n_in = n // 2, n - n // 2
    s_out = np.linspace(0.0, math.pi, n_out)
    s_in = np.linspace(0.0, math.pi, n_in)
    x = np.concatenate(
        [
            np.stack([np.cos(s_out), np.sin(s_out)], axis=1),
            np.stack([1.0 - np.cos(s_in), 0.5 - np.sin(s_in)], axis=1),
        ]
    )
    x += noise * rng.random((n, 1))
    return x, np.repeat(np.arange(2), [n_out, n_in])


def _eight_gaussians(rng: np.random.Generator, n: int, noise: float | None) -> Sample:
    centers, stds = _eight_gaussians_modes()
    labels = rng.integers(0, len(centers), size=n)
    return centers[labels] + stds[labels, None] * rng.standard_normal((n, 2)), labels


def _pinwheel(rng: np.random.Generator, n: int, noise: float | None) -> Sample:
    radial_std, tangential_std, n_arms, rate = 0.3, 0.1, 5, 0.25
    labels = np.repeat(np.arange(n_arms), n)
    features = rng.standard_normal((len(labels), 2)) * np.array([radial_std, tangential_std])
    features[:, 0] += 1.0
    angles = 2.0 * math.pi * labels / n_arms + rate * np.exp(features[:, 0])
    cos, sin = np.cos(angles), np.sin(angles)
    # row vector times [[cos, -sin], [sin, cos]], as FFJORD's einsum("ti,tij->tj")
    x = np.stack(
        [features[:, 0] * cos + features[:, 1] * sin, features[:, 1] * cos - features[:, 0] * sin],
        axis=1,
    )
    return 2.0 * x, labels


def _checkerboard(rng: np.random.Generator, n: int, noise: float | None) -> Sample:
    x1 = rng.random(n) * 4.0 - 2.0
    x2 = rng.random(n) - rng.integers(0, 2, size=n) * 2.0 + np.floor(x1) % 2
    return 2.0 * np.stack([x1, x2], axis=1), None


def _circles(rng: np.random.Generator, n: int, noise: float | None) -> Sample:
    noise = 0.08 if noise is None else noise
    factor, scale = 0.5, 3.0
    n_out, n_in = n // 2, n - n // 2
    s_out = np.linspace(0.0, 2.0 * math.pi, n_out, endpoint=False)
    s_in = np.linspace(0.0, 2.0 * math.pi, n_in, endpoint=False)
    x = np.concatenate(
        [
            np.stack([np.cos(s_out), np.sin(s_out)], axis=1),
            factor * np.stack([np.cos(s_in), np.sin(s_in)], axis=1),
        ]
    )
    x += noise * rng.standard_normal(x.shape)
    return scale * x, np.repeat(np.arange(2), [n_out, n_in])


def _concentric(rng: np.random.Generator, n: int, noise: float | None) -> Sample:
    """torchdyn's ``spheres`` in 2-D with the released ``ToyConcentric`` settings: half the
    points uniform on the circle of radius 0.75 (label 1), half on radius 1.5 (label 0),
    plus N(0, noise²) (noise 0.1)."""
    noise = 0.1 if noise is None else noise
    n_in, n_out = n // 2, n - n // 2
    v = rng.standard_normal((n, 2))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    x = v * np.concatenate([np.full(n_in, 0.75), np.full(n_out, 1.5)])[:, None]
    x += noise * rng.standard_normal(x.shape)
    return x, np.concatenate([np.ones(n_in, dtype=np.int64), np.zeros(n_out, dtype=np.int64)])


def _two_spirals(rng: np.random.Generator, n: int, noise: float | None) -> Sample:
    noise = 0.1 if noise is None else noise
    t = np.sqrt(rng.random(n)) * math.radians(540.0)
    arm = np.stack(
        [-np.cos(t) * t + rng.random(n) * 0.5, np.sin(t) * t + rng.random(n) * 0.5], axis=1
    )
    x = np.concatenate([arm, -arm]) / 3.0
    x += noise * rng.standard_normal(x.shape)
    return x, np.repeat(np.arange(2), n)


@dataclass(frozen=True)
class _ToySpec:
    sampler: Callable[[np.random.Generator, int, float | None], Sample]
    default_n: int
    n_modes: int | None  # set: ``n`` counts points per mode; None: ``n`` is the total
    has_noise: bool = False


_SPECS: dict[str, _ToySpec] = {
    "gaussians": _ToySpec(_gaussians, 2**14 // GAUSSIANS_N_MODES, GAUSSIANS_N_MODES),
    "gaussianspiral": _ToySpec(_gaussianspiral, 2**14 // SPIRAL_N_MODES, SPIRAL_N_MODES),
    "spiral": _ToySpec(_spiral, 2**14, 2, has_noise=True),
    "moons": _ToySpec(_moons, 1024, None, has_noise=True),
    "8gaussians": _ToySpec(_eight_gaussians, 2**14, None),
    "pinwheel": _ToySpec(_pinwheel, 2**14 // 5, 5),
    "checkerboard": _ToySpec(_checkerboard, 2**14, None),
    "circles": _ToySpec(_circles, 2**14, None, has_noise=True),
    "2spirals": _ToySpec(_two_spirals, 2**13, 2, has_noise=True),
    "concentric": _ToySpec(_concentric, 1024, None, has_noise=True),
}

TOY_DATASETS: tuple[str, ...] = tuple(_SPECS)
"""Names accepted by :func:`generate_toy`."""

_MODES: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "gaussians": _gaussians_modes,
    "gaussianspiral": _gaussianspiral_modes,
    "8gaussians": _eight_gaussians_modes,
}

GAUSSIAN_MODE_DATASETS: tuple[str, ...] = tuple(_MODES)
"""Toy sets that are Gaussian mixtures, for which :func:`toy_modes` gives centers and stds."""

CLASSIFICATION_DATASETS: tuple[str, ...] = ("moons", "concentric")
"""Two-class 2-D sets whose labels are the classes of §4.6's classifiers (as many classes as
input dimensions, which a neural-ODE classifier whose final state is its logits needs)."""


def _spec(name: str) -> _ToySpec:
    try:
        return _SPECS[name]
    except KeyError:
        raise ValueError(
            f"Unknown toy data set {name!r}; valid names are: {', '.join(TOY_DATASETS)}."
        ) from None


def _resolve_size(name: str, spec: _ToySpec, n_per_mode: int | None, n_samples: int | None) -> int:
    """The sampler's size unit (per-mode count, or total) from the user's keywords."""
    if n_per_mode is not None and n_samples is not None:
        raise ValueError(
            f"{name}: give either n_per_mode or n_samples, not both (got {n_per_mode} and "
            f"{n_samples})."
        )
    if n_per_mode is not None:
        if spec.n_modes is None:
            raise ValueError(
                f"{name} has no fixed per-mode counts; set its size with n_samples instead of "
                "n_per_mode."
            )
        n = int(n_per_mode)
    elif n_samples is not None:
        n = int(n_samples) // spec.n_modes if spec.n_modes else int(n_samples)
    else:
        n = spec.default_n
    minimum = 1 if spec.n_modes else 2
    if n < minimum:
        unit = "point(s) per mode" if spec.n_modes else "points"
        raise ValueError(
            f"{name}: the training set needs at least {minimum} {unit}, the requested size "
            f"gives {n}; increase n_per_mode or n_samples."
        )
    return n


def generate_toy(
    name: str,
    seed: int = 0,
    *,
    n_per_mode: int | None = None,
    n_samples: int | None = None,
    noise: float | None = None,
) -> DataSplits:
    """Draw a toy data set with its validation and test sets, standardized (Sparse Flows §4.1).

    Arguments:
        name: one of :data:`TOY_DATASETS`.
        seed: non-negative integer; the same seed gives the same data. The training,
            validation and test sets come from three independent streams spawned from it.
        n_per_mode: training points per mode, for sets with equal mode counts
            (``gaussians``, ``gaussianspiral``, ``spiral``, ``pinwheel``, ``2spirals``).
        n_samples: training-set size; for per-mode sets it is divided evenly among the modes
            (rounded down).
        noise: noise level of ``spiral`` (uniform, default 0.5), ``moons`` (width of the
            uniform diagonal shift, 0.1), ``circles`` (0.08), ``2spirals`` (0.1) and
            ``concentric`` (Gaussian std, 0.1); other sets reject it.

    Returns:
        :class:`DataSplits` with float32 ``(N, 2)`` splits, int64 mode labels (``None`` for
        ``checkerboard``), the scalar ``mean``/``std`` applied, and ``name``.
    """
    spec = _spec(name)
    if noise is not None and not spec.has_noise:
        noisy = [n for n, s in _SPECS.items() if s.has_noise]
        raise ValueError(f"{name} has no noise setting; only {', '.join(noisy)} take noise=.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    n_train = _resolve_size(name, spec, n_per_mode, n_samples)
    n_eval = max(1, n_train // 2)

    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(3)]
    raw: list[np.ndarray] = []
    labels: list[np.ndarray | None] = []
    for rng, n in zip(streams, (n_train, n_eval, n_eval), strict=True):
        x, y = spec.sampler(rng, n, noise)
        order = rng.permutation(len(x))
        raw.append(x[order])
        labels.append(None if y is None else y[order])

    mean = float(raw[0].mean())
    std = float(raw[0].std())
    if not std > 0.0:
        raise ValueError(f"{name}: the training set has zero spread; increase its size.")

    def standardize(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((x - mean) / std).astype(np.float32))

    def as_labels(y: np.ndarray | None) -> torch.Tensor | None:
        return None if y is None else torch.from_numpy(y.astype(np.int64))

    return DataSplits(
        train=standardize(raw[0]),
        val=standardize(raw[1]),
        test=standardize(raw[2]),
        train_labels=as_labels(labels[0]),
        val_labels=as_labels(labels[1]),
        test_labels=as_labels(labels[2]),
        mean=mean,
        std=std,
        name=name,
    )


def toy_modes(name: str, splits: DataSplits | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Centers and standard deviations of the Gaussian modes a toy set is drawn from.

    Used by the mode-collapse metric of Sparse Flows §4.4 (a sample is of good quality if it
    lies within a few standard deviations of its nearest mode). Label ``k`` of
    :func:`generate_toy` is mode ``k`` here.

    Arguments:
        name: one of :data:`GAUSSIAN_MODE_DATASETS`.
        splits: if given, the modes are mapped into the standardized coordinates of these
            splits (``(center - mean) / std`` and ``std_k / std``); otherwise they are in raw
            data coordinates.

    Returns:
        ``(centers, stds)``: float64 tensors of shape ``(K, 2)`` and ``(K,)`` (isotropic
        standard deviation per mode).
    """
    if name not in _MODES:
        _spec(name)  # unknown names get the full list
        raise ValueError(
            f"{name} is not a Gaussian mixture, so it has no mode centers/stds; "
            f"toy_modes supports {', '.join(GAUSSIAN_MODE_DATASETS)}."
        )
    centers, stds = (torch.from_numpy(a) for a in _MODES[name]())
    if splits is not None:
        if not isinstance(splits.mean, float) or not isinstance(splits.std, float):
            raise ValueError(
                "toy_modes expects splits standardized by a scalar mean/std (as generate_toy "
                "makes them); got per-column statistics."
            )
        centers = (centers - splits.mean) / splits.std
        stds = stds / splits.std
    return centers, stds
