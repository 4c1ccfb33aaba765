"""Using a learned task on new inputs: read them (.npy, .npz, images), apply the task's own input
transform, run its subnetwork and head, and map the predictions back to the user's labels."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wsncli.engine.data import loaders
from wsncli.engine.data.preprocess import Preprocess, scaled
from wsncli.engine.data.readers import data_limit, read_npz
from wsncli.engine.data.splits import pmnist_permutation
from wsncli.engine.nn.user import ArchModule
from wsncli.engine.runtime import choose_threads, resolve_device
from wsncli.engine.store.checkpoint import Checkpoint, load_checkpoint, task_input_shape
from wsncli.engine.store.paths import OutputTarget, file_prefix, plan_output, read_regular_file, write_output
from wsncli.engine.usecases.outputs import device_transform, predict_logits, set_task_mode
from wsncli.errors import DataError, TaskError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NPZ_KEYS = ("x", "x_test", "inputs")


@dataclass(frozen=True)
class Predictions:
    task: int
    classes: list
    indices: np.ndarray  # (N,) head labels
    labels: np.ndarray  # (N,) the user's labels (int64 or str)
    probabilities: np.ndarray | None  # (N, K) float32 softmax, when asked


def task_transform(ckpt: Checkpoint, task: int, raw: np.ndarray | None = None) -> Preprocess:
    """The transform the task was learned with: stored (versions 2 and 3), else the benchmark's fixed one."""
    if task in ckpt.preps:
        return ckpt.preps[task]
    bench = ckpt.meta.benchmark
    if bench == "split-digits":
        return scaled(16.0, divide=True)
    if bench == "pmnist":
        return scaled(
            1 / 255.0, mean=loaders.MNIST_NORM[0], std=loaders.MNIST_NORM[1], permutation=pmnist_permutation(task)
        )
    if bench in ("split-mnist", "split-fashion"):
        mean, std = loaders.FASHION_NORM if bench == "split-fashion" else loaders.MNIST_NORM
        return scaled(1 / 255.0, mean=mean, std=std)
    if bench in ("split-cifar10", "split-cifar100"):
        mean, std = loaders.CIFAR100_NORM if bench == "split-cifar100" else loaders.CIFAR10_NORM
        return scaled(
            1 / 255.0, mean=np.asarray(mean, np.float32)[:, None, None], std=np.asarray(std, np.float32)[:, None, None]
        )
    return loaders.npz_input_prep(bench, "inputs", raw if raw is not None else np.zeros(1, np.float32))


def _npy(path: Path) -> np.ndarray:
    import io

    raw = read_regular_file(path, data_limit(), "input file", DataError)
    try:
        fh = io.BytesIO(raw)
        version = np.lib.format.read_magic(fh)
        reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if reader is None:
            raise ValueError(f"npy format version {version} is not supported")
        shape, _fortran, dtype = reader(fh, max_header_size=10000)
        if dtype.hasobject:
            raise ValueError("it holds Python objects (pickles), which wsn never loads")
        if math.prod(shape) * dtype.itemsize > len(raw):
            raise ValueError(f"its header declares {shape} {dtype}, more than the file holds")
        return np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc})") from None


def read_inputs(path: Path, ckpt: Checkpoint) -> np.ndarray:
    """Raw inputs (N, *sample) from .npy, .npz (x / x_test / inputs / its only array) or images."""
    path = Path(path)
    if is_image_input(path):
        return _images(path, ckpt)
    prefix = read_regular_file(path, data_limit(), "input file", DataError)[:6]
    if prefix.startswith(b"\x93NUMPY"):
        return _npy(path)
    if prefix.startswith(b"PK"):
        arrays = read_npz(path)
        key = next((k for k in NPZ_KEYS if k in arrays), None) or (next(iter(arrays)) if len(arrays) == 1 else None)
        if key is None:
            raise DataError(
                f"{path}: an npz of inputs needs an array named x, x_test or inputs (it has: "
                f"{', '.join(sorted(arrays))})"
            )
        return arrays[key]
    raise DataError(f"{path}: not an input file wsn reads (.npy, .npz, or .png/.jpg images or a folder of them)")


def image_files(path: Path) -> list[Path]:
    """The images `predict` reads for `path`, in the order of its predictions: the file itself, or the
    folder's .png/.jpg/.jpeg files (not hidden ones) sorted by name, as Python sorts strings."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def is_image_input(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES


def _images(path: Path, ckpt: Checkpoint) -> np.ndarray:
    from wsncli.engine.data import images

    shape = tuple(ckpt.meta.model.input_shape)
    if len(shape) != 3:
        raise DataError(f"{path}: images need a network of image inputs; this one takes {shape}")
    files = image_files(path)
    if not files:
        raise DataError(f"{path}: no .png/.jpg/.jpeg images in this folder")
    return images.decode_images(files, shape[0], shape[1] if ckpt.meta.image_size else None, expected_size=shape[1:])


def fit_shape(x: np.ndarray, shape: tuple[int, ...], where: str) -> np.ndarray:
    """(N, *sample) with the network's sample shape: one sample gets a batch axis; flat networks
    take any sample with as many values (28x28 images for a 784-input MLP)."""
    if x.ndim == len(shape) and tuple(x.shape) == shape:
        x = x[None]
    if tuple(x.shape[1:]) == shape:
        return x
    if len(shape) == 1 and x.ndim >= 2 and math.prod(x.shape[1:]) == shape[0]:
        return x.reshape(len(x), -1)
    raise DataError(f"{where}: inputs have shape {tuple(x.shape[1:])} per sample, the task's network takes {shape}")


def predict_task(
    ckpt: Checkpoint, task: int, x: np.ndarray, device: torch.device, probabilities: bool, where: str
) -> Predictions:
    if task not in ckpt.learned():
        raise TaskError(
            f"task {task} is not learned in this checkpoint (learned: {', '.join(map(str, ckpt.learned())) or 'none'})"
        )
    if x.dtype.kind not in "fiub":
        raise DataError(f"{where}: inputs have dtype {x.dtype}; they must be numbers")
    x = fit_shape(x, task_input_shape(ckpt, task), where)
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DataError(f"{where}: inputs contain NaN or infinite values")
    ckpt.require_intact_record(task)
    record = ckpt.task_record(task)
    model = ckpt.model.to(device)
    masks = ckpt.masks.get(task)
    set_task_mode(model, None if masks is None else {n: m.to(device) for n, m in masks.items()})
    logits = predict_logits(
        model, x, task, device, transform=device_transform(task_transform(ckpt, task, x), device)
    )  # (N, K)
    indices = logits.argmax(1).numpy().astype(np.int64)
    classes = list(record.classes)
    labels = np.asarray(classes)[indices] if len(indices) else np.zeros(0, np.int64)
    probs = torch.softmax(logits, 1).numpy().astype(np.float32) if probabilities else None
    return Predictions(task, classes, indices, labels, probs)


@dataclass(frozen=True)
class PredictRequest:
    """What `wsn predict` was asked: the file, the task, the inputs, where to write (None: nowhere; a
    `.npy` suffix is added when missing), whether to give probabilities, the device, the trunk factory."""

    ckpt: Path
    task: int
    inputs: Path
    output: Path | None = None
    force: bool = False
    probabilities: bool = False
    device: str = "auto"
    arch: ArchModule | None = None


@dataclass(frozen=True)
class PredictResult:
    predictions: Predictions
    files: list[str] | None  # image inputs: the file of each prediction, in order
    output: Path | None  # where the labels (or probabilities) were written


@dataclass
class PredictionSetup:
    """What both predict use cases do first: the .npy output planned (refused before any work), the
    device resolved, the checkpoint loaded, the thread count handed to the caller."""

    output: Path | None  # the .npy path as written (a suffix added where missing)
    target: OutputTarget | None  # None without --output
    device: torch.device
    ckpt: Checkpoint


def prepare_prediction(
    ckpt_path: Path,
    inputs: Path,
    output: Path | None,
    force: bool,
    device: str,
    arch: ArchModule | None,
    on_threads: Callable[[int], None] | None,
) -> PredictionSetup:
    target = None
    if output is not None and str(output) != "-" and output.suffix.lower() != ".npy":
        output = output.with_name(output.name + ".npy")  # a .npy file is named so, as numpy.save names it
    if output is not None:
        target = plan_output(
            output,
            what=".npy file",
            inputs=[ckpt_path, inputs],
            force=force,
            is_own_kind=lambda p: file_prefix(p, 6) == b"\x93NUMPY",
        )
    resolved = resolve_device(device)
    ckpt = load_checkpoint(ckpt_path, arch=arch)
    if on_threads is not None:
        on_threads(choose_threads(sum(layer.weight.numel() for layer in ckpt.model.subnet_layers().values()), None))
    return PredictionSetup(output, target, resolved, ckpt)


def predict_file(req: PredictRequest, on_threads: Callable[[int], None] | None = None) -> PredictResult:
    """`wsn predict` in one call: plan the output (refused before any work), load the checkpoint, read
    the inputs, predict, write the .npy. The thread count goes to `on_threads` (the caller sets it)."""
    setup = prepare_prediction(req.ckpt, req.inputs, req.output, req.force, req.device, req.arch, on_threads)
    output, target, device, ckpt = setup.output, setup.target, setup.device, setup.ckpt
    result = predict_task(ckpt, req.task, read_inputs(req.inputs, ckpt), device, req.probabilities, str(req.inputs))
    files = [str(f) for f in image_files(req.inputs)] if is_image_input(req.inputs) else None
    if target is not None:
        buffer = io.BytesIO()
        np.save(buffer, result.probabilities if req.probabilities else result.labels, allow_pickle=False)
        write_output(target, buffer.getvalue())
    return PredictResult(result, files, output)
