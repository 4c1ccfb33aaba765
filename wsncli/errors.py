"""wsn's exception hierarchy: every deliberate failure is a WsnError with an exit code.

Exit codes (documented in README.md): 0 ok, 1 bad input/data/file, 2 usage, 3 forgetting
detected, 130 interrupted, 141 standard output closed by its reader, 143 terminated.
"""

from formats.errors import FormatError, WsnError


class UsageError(WsnError):
    """A command line that cannot mean anything (conflicting or malformed options)."""

    exit_code = 2


class FieldError(UsageError):
    """A request field whose value cannot work. The message names the field as the Python API knows it
    (`capacity must be ...`); the command layer names the option instead (`--capacity must be ...`)."""

    def __init__(self, field: str, rest: str) -> None:
        super().__init__(f"{field} {rest}")
        self.field, self.rest = field, rest

    def as_option(self) -> str:
        return f"--{self.field.replace('_', '-')} {self.rest}"


class DataError(WsnError):
    """Task data is missing, malformed, or does not fit the network."""


class CheckpointError(WsnError):
    """A checkpoint cannot be read, is corrupt, has another version, or does not match the request."""


class TaskError(WsnError):
    """A task request conflicts with the checkpoint (already learned, unknown task, ...)."""


class DeviceError(WsnError):
    """The requested device (e.g. cuda) is not available."""


class LockError(WsnError):
    """Another wsn process holds the checkpoint's lock."""


class ForgettingDetected(WsnError):
    """A learned task's outputs or subnetwork changed since it was learned."""

    exit_code = 3


class OutputError(WsnError):
    """Standard output cannot be written (a full device, a closed descriptor); exit 1."""


class ParallelFailure(WsnError):
    """A process of a data-parallel run failed; every process reports it with its exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Interrupted(WsnError):
    """The user stopped the command (SIGINT); the checkpoint is as it was before."""

    exit_code = 130


__all__ = [
    "WsnError",
    "FormatError",
    "UsageError",
    "FieldError",
    "DataError",
    "CheckpointError",
    "TaskError",
    "DeviceError",
    "LockError",
    "ForgettingDetected",
    "OutputError",
    "ParallelFailure",
    "Interrupted",
]
