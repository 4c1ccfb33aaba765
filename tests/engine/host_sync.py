"""A mode that fails on every operation a GPU would have to wait for, caught on the CPU.

On CUDA these synchronise the host with the device (or give an output whose shape depends on the
data, which CUDA-graph capture cannot record): reading a value (`.item()`, `int(t)`, `bool(t)`,
indexing with a 0-d tensor: `aten._local_scalar_dense`), `nonzero` and everything built on it
(boolean-mask indexing and assignment, `masked_select`, `unique`, `bincount`, `repeat_interleave`
without `output_size`), comparisons that return a Python bool (`torch.equal`, `allclose`), and copies
to the host (`.cpu()`, `.numpy()`, `.tolist()`). On the CPU nothing waits, so `HostSyncGuard` looks at
every ATen operation (a TorchDispatchMode, which sees backward and the optimizer too) and every
tensor method call (a TorchFunctionMode) and records any of these, failing unless the call comes
from inside one of the `allowed` functions (the loop's deliberate per-epoch and per-CHECK_EVERY reads).
"""

from __future__ import annotations

import sys
import traceback
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

_ALWAYS = [
    "_local_scalar_dense",
    "item",
    "is_nonzero",
    "equal",
    "allclose",
    "nonzero",
    "nonzero_numpy",
    "argwhere",
    "masked_select",
    "unique",
    "_unique",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "unique_dim_consecutive",
    "bincount",
]
FORBIDDEN_OPS = {getattr(torch.ops.aten, name) for name in _ALWAYS if hasattr(torch.ops.aten, name)}
INDEX_OPS = {torch.ops.aten.index, torch.ops.aten.index_put, torch.ops.aten.index_put_, torch.ops.aten._index_put_impl_}
FORBIDDEN_METHODS = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.cpu,
    torch.Tensor.numpy,
    torch.Tensor.__bool__,
    torch.Tensor.__int__,
    torch.Tensor.__float__,
    torch.Tensor.__index__,
}


class HostSync(AssertionError):
    """An operation that would synchronise with the host ran outside the allowed functions."""


def _needs_host(func, args, kwargs) -> bool:
    packet = func.overloadpacket
    if packet in FORBIDDEN_OPS:
        return True
    if packet is torch.ops.aten.repeat_interleave:  # with tensor repeats, the output size is their sum
        return func is not torch.ops.aten.repeat_interleave.self_int and kwargs.get("output_size") is None
    if packet in INDEX_OPS:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices)
    return False


class HostSyncGuard:
    """with HostSyncGuard(allowed=(fn, ...)) as guard: ...; guard.violations, guard.allowed_hits, guard.ops."""

    def __init__(self, allowed=()) -> None:
        self.allowed_codes = {getattr(fn, "__code__", fn) for fn in allowed}
        self.violations: list[str] = []
        self.allowed_hits: Counter[str] = Counter()
        self.ops: Counter[str] = Counter()
        guard = self

        class _Dispatch(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                guard.ops[str(func.overloadpacket.__name__)] += 1
                if _needs_host(func, args, kwargs):
                    guard._check(str(func))
                return func(*args, **kwargs)

        class _Function(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                if func in FORBIDDEN_METHODS:
                    guard._check(f"Tensor.{func.__name__}")
                return func(*args, **(kwargs or {}))

        self._modes = (_Function(), _Dispatch())

    def _check(self, what: str) -> None:
        frame = sys._getframe(2)
        while frame is not None:
            if frame.f_code in self.allowed_codes:
                self.allowed_hits[frame.f_code.co_name] += 1
                return
            frame = frame.f_back
        where = [
            f"{f.filename.rsplit('/', 3)[-1]}:{f.lineno} {f.name}"
            for f in traceback.extract_stack(sys._getframe(2))
            if "wsncli" in f.filename or "tests" in f.filename
        ]
        self.violations.append(f"{what} at {' <- '.join(reversed(where[-4:]))}")
        raise HostSync(self.violations[-1])

    def __enter__(self) -> HostSyncGuard:
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
