"""How a task's raw inputs become the network's float32 inputs (stored with each task, reused by
eval, predict and export):

    x' = ((float32(x)[..., permutation]  (* or /)  scale) - mean) / std,  then `padding` zeros appended

float32 throughout, one operation at a time, so numpy here and torch on any device give the same bits
(each elementwise IEEE operation is correctly rounded). Identity steps are skipped, which is exact too.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

_ZERO = np.zeros(1, np.float32)  # at least 1-D: what a file stores is what is hashed and applied
_ONE = np.ones(1, np.float32)
_MIN_STD = 1e-8  # a constant feature keeps std 1 (it is then only centred)


@dataclass(frozen=True, eq=False)
class Preprocess:
    """One task's input transform; `mean`/`std` broadcast against one sample ((1,), (C, 1, 1) or
    the whole sample shape); `permutation` indexes the flattened sample (pmnist)."""

    scale: float = 1.0
    divide: bool = False  # x / scale (uint8 npz inputs: / 255, as wsn 0.1 did) instead of x * scale
    mean: np.ndarray = field(default_factory=lambda: _ZERO)
    std: np.ndarray = field(default_factory=lambda: _ONE)
    permutation: np.ndarray | None = None
    standardized: bool = False  # mean/std were measured on the task's training split
    padding: int = 0  # zeros appended to each (flat) sample: a task with fewer features than the network

    def network_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The network's sample shape for this task's sample shape."""
        return (shape[0] + self.padding,) if self.padding else tuple(shape)

    @property
    def is_identity_affine(self) -> bool:
        return not self.mean.any() and bool((self.std == 1).all())

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(N, *sample) raw -> (N, *sample) float32, a new array. Values that overflow become inf or
        NaN silently: callers refuse them by name (data.checks), never with numpy's warnings."""
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            out = np.array(x, dtype=np.float32, copy=True)
            if self.permutation is not None:
                out = out.reshape(len(out), -1)[:, self.permutation].reshape(out.shape)
            if self.divide:
                out /= np.float32(self.scale)
            elif self.scale != 1.0:
                out *= np.float32(self.scale)
            if not self.is_identity_affine:
                out -= self.mean
                out /= self.std
            if self.padding:
                out = np.concatenate([out, np.zeros((len(out), self.padding), np.float32)], axis=1)  # (N, D + padding)
        return out


def scaled(scale: float, divide: bool = False, mean=None, std=None, permutation=None) -> Preprocess:
    """A fixed transform: a scale, then fixed (mean, std) constants (scalars or per channel)."""
    m = _ZERO if mean is None else np.atleast_1d(np.asarray(mean, np.float32))
    s = _ONE if std is None else np.atleast_1d(np.asarray(std, np.float32))
    return Preprocess(float(scale), divide, m, s, None if permutation is None else np.asarray(permutation, np.int64))


def standardize(prep: Preprocess, x_train: np.ndarray, per_channel: bool) -> Preprocess:
    """`prep` plus mean/std measured on the (raw) training inputs: per feature, or per channel of
    (N, C, H, W) images. Computed in float64, stored as float32; a constant feature keeps std 1."""
    base = replace(prep, mean=_ZERO, std=_ONE).apply(x_train).astype(np.float64)  # (N, *sample)
    axes = (0, 2, 3) if per_channel and base.ndim == 4 else (0,)
    mean = base.mean(axis=axes, keepdims=True)[0]
    std = base.std(axis=axes, keepdims=True)[0]
    std = np.where(std < _MIN_STD, 1.0, std)
    return replace(prep, mean=mean.astype(np.float32), std=std.astype(np.float32), standardized=True)
