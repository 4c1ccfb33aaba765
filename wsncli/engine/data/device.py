"""A task's input transform as torch operations on any device, giving numpy's bits (data.preprocess)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from wsncli.engine.data.preprocess import Preprocess


def device_transform(prep: Preprocess, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """prep.apply as torch ops on `device`, operation for operation (so the bits are numpy's)."""
    perm = None if prep.permutation is None else torch.from_numpy(prep.permutation).to(device)
    scale = torch.tensor(np.float32(prep.scale), device=device)
    mean, std = (torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in (prep.mean, prep.std))
    affine = not prep.is_identity_affine

    def apply(x: torch.Tensor) -> torch.Tensor:  # (B, *sample) raw -> (B, *sample) float32
        out = x.to(torch.float32)
        if perm is not None:
            out = out.reshape(out.shape[0], -1)[:, perm].reshape(x.shape)
        if prep.divide:
            out = out / scale
        elif prep.scale != 1.0:
            out = out * scale
        if affine:
            out = (out - mean) / std
        if prep.padding:
            out = torch.nn.functional.pad(out, (0, prep.padding))  # (B, D + padding): zero features
        return out

    return apply
