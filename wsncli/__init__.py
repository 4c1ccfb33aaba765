"""wsn: forget-free continual learning with Winning SubNetworks, one task per command.

The Python API (docs/API.md) is imported lazily, on first use of a name, so `wsn --help` and
`wsn --version` start without torch:

    import wsncli as wsn
    net = wsn.masked(MyNet())                 # Linear/Conv2d masked, BatchNorm per task, in place
    learner = wsn.Learner(net, capacity=0.5)  # your own loop inside learner.learning(t)
    ckpt = wsn.open_checkpoint("run.wsn", arch=my_trunk)
    ckpt.task(2)(x)                           # exactly task 2's function
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

# public name -> the engine room that holds it
_HOMES = {
    "masked": "wsncli.engine.nn.masking",
    "masking_report": "wsncli.engine.nn.masking",
    "MaskingReport": "wsncli.engine.nn.masking",
    "fingerprint": "wsncli.engine.nn.masking",
    "Learner": "wsncli.engine.training.learner",
    "LayerUse": "wsncli.engine.training.learner",
    "Checkpoint": "wsncli.engine.store.checkpoint",
    "TaskFunction": "wsncli.engine.store.checkpoint",
    "open_checkpoint": "wsncli.engine.store.checkpoint",
    "ArchModule": "wsncli.engine.nn.user",
    "load_arch_module": "wsncli.engine.nn.user",
    # the use cases the commands run, one call each
    "TaskRequest": "wsncli.engine.usecases.learn",
    "learn_task": "wsncli.engine.usecases.learn",
    "EvalRequest": "wsncli.engine.usecases.evaluate",
    "evaluate_file": "wsncli.engine.usecases.evaluate",
    "PredictRequest": "wsncli.engine.usecases.predict",
    "predict_file": "wsncli.engine.usecases.predict",
    "ExportRequest": "wsncli.engine.usecases.export",
    "export_file": "wsncli.engine.usecases.export",
    "report_folder": "wsncli.engine.usecases.report",
    "pack_file": "wsncli.engine.usecases.pack",
    "unpack_masks_file": "wsncli.engine.usecases.pack",
    "inspect_file": "wsncli.engine.usecases.inspect",
    # task inference and forgetting (docs/INFERENCE.md, docs/FORGET.md)
    "InferRequest": "wsncli.engine.usecases.infer",
    "TaskInference": "wsncli.engine.usecases.infer",
    "infer_tasks": "wsncli.engine.usecases.infer",
    "AutoPredictRequest": "wsncli.engine.usecases.predict_auto",
    "predict_auto_file": "wsncli.engine.usecases.predict_auto",
    "InferEvalRequest": "wsncli.engine.usecases.infer_eval",
    "evaluate_inference_file": "wsncli.engine.usecases.infer_eval",
    "ForgetRequest": "wsncli.engine.usecases.forget",
    "forget_task": "wsncli.engine.usecases.forget",
}

__all__ = ["__version__", *_HOMES]


def __getattr__(name: str) -> Any:
    if name == "errors":  # the exception hierarchy: wsn.errors.TaskError, ...
        return importlib.import_module("wsncli.errors")
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'wsncli' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
