"""Paths the user names are theirs: safe reads, and writes that follow symlinks and replace atomically.

Writing to `path`:
- a symlink is followed to its target, and the target is what gets replaced (the link stays);
- a regular file is replaced atomically (temporary file in the same folder, fsync, rename, fsync of
  the folder), keeping its mode and, when permitted, its owner; a hard-linked file (more than one
  name) is refused, since a rename would split its names into two different files;
- a character device or FIFO (`/dev/null`, `/dev/stdout`, a named pipe) is streamed into, never
  renamed over or truncated;
- a folder, block device or socket is refused;
- a target that is one of the command's input files (same device and inode) is refused;
- an existing regular file that is not of the kind the command writes needs `force`.
Reads open without blocking (a FIFO cannot hang them), check the file is regular and bounded in size
first, and read it once.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from wsncli.engine.journal import journal
from wsncli.errors import WsnError

TMP_MARK = ".tmp-"


@dataclass(frozen=True)
class OutputTarget:
    """Where a write goes: `path` as named, `real` with symlinks resolved, and how it is written."""

    path: Path
    real: Path
    mode: str  # "create" (no file yet), "replace" (regular file) or "stream" (character device, FIFO)
    existing: os.stat_result | None


def _describe(st: os.stat_result) -> str:
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISFIFO, "a FIFO"),
    )
    return next((name for test, name in kinds if test(st.st_mode)), "not a regular file")


def resolve(path: Path, error: type[WsnError] = WsnError) -> Path:
    """`path` with every symlink followed (a dangling link resolves to where its target would be)."""
    path = Path(path)
    try:
        return Path(os.path.realpath(path, strict=False))
    except (OSError, ValueError) as exc:
        raise error(f"{path}: cannot resolve: {getattr(exc, 'strerror', None) or exc}") from None


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def plan_output(
    path: Path,
    *,
    what: str,
    is_own_kind: Callable[[Path], bool] | None = None,
    force: bool = False,
    inputs: Iterable[Path] = (),
    allow_stream: bool = True,
    error: type[WsnError] = WsnError,
) -> OutputTarget:
    """Check a write to `path` is allowed (module docstring) before any work is done.

    `what` names the kind of file written (e.g. "packed-mask file"); `is_own_kind(real)` says whether
    an existing regular file is one (overwriting anything else needs `force`); `inputs` are the
    command's input files, which the output must not be.
    """
    path = Path(path)
    real = resolve(path, error)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise error(f"{path}: cannot write: {exc.strerror or exc}") from None
    if st is None:
        parent = real.parent
        if not parent.is_dir():
            raise error(f"{path}: cannot write: folder {parent} does not exist")
        return OutputTarget(path, real, "create", None)
    for source in inputs:
        try:
            if same_file(st, os.stat(source)):
                raise error(f"{path} is the input file {source}: refusing to overwrite it with a {what}")
        except FileNotFoundError:
            continue
        except OSError:
            continue
    if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        if not allow_stream:
            raise error(f"{path} is {_describe(st)}; a {what} must be a regular file")
        return OutputTarget(path, real, "stream", st)
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path} is {_describe(st)}, not a file: refusing to write a {what} there")
    if st.st_nlink > 1:
        raise error(
            f"{path} has {st.st_nlink} hard links: replacing it would split them into different files; "
            f"write to a new name or copy it first"
        )
    if is_own_kind is not None and not force and not is_own_kind(real):
        raise error(f"{path} exists and is not a {what}; pass --force to overwrite it")
    return OutputTarget(path, real, "replace", st)


def temp_path(real: Path) -> Path:
    """Where an atomic write of `real` is staged: `.<name>.tmp-<pid>` in the same folder."""
    return real.with_name(f".{real.name}{TMP_MARK}{os.getpid()}")


def write_output(target: OutputTarget, data: bytes | memoryview, error: type[WsnError] = WsnError) -> int:
    """Write `data` as `target` planned, all or nothing for files; returns the bytes written."""
    if target.mode == "stream":
        return _stream(target, data, error)
    return _replace(target, data, error)


def _stream(target: OutputTarget, data: bytes | memoryview, error: type[WsnError]) -> int:
    try:
        fd = os.open(target.real, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)  # no O_CREAT, no O_TRUNC
    except OSError as exc:
        raise error(f"{target.path}: cannot write: {exc.strerror or exc}") from None
    try:
        view, done = memoryview(data), 0
        while done < len(view):
            done += os.write(fd, view[done:])
        journal().written(target.path)
        return done
    except BrokenPipeError:
        raise error(f"{target.path}: the reader closed the pipe") from None
    except OSError as exc:
        raise error(f"{target.path}: cannot write: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _replace(target: OutputTarget, data: bytes | memoryview, error: type[WsnError]) -> int:
    real, tmp = target.real, temp_path(target.real)
    journal().on_abrupt_exit(id(tmp), lambda: os.unlink(tmp) if os.path.lexists(tmp) else None)
    try:
        try:
            os.unlink(tmp)  # a stale one of ours (same pid), or a planted symlink: never follow it
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        try:
            view, done = memoryview(data), 0
            while done < len(view):
                done += os.write(fd, view[done:])
            if target.existing is not None:
                _keep_mode_and_owner(fd, target.existing)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, real)
        journal().written(target.path)
        _fsync_dir(real.parent)
        return len(data)
    except OSError as exc:
        raise error(f"{target.path}: cannot write: {exc.strerror or exc}; the old file (if any) is unchanged") from None
    finally:
        journal().on_abrupt_exit(id(tmp), None)
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _keep_mode_and_owner(fd: int, old: os.stat_result) -> None:
    try:
        os.fchown(fd, old.st_uid, old.st_gid)
    except OSError:
        pass  # not permitted (not root, not the owner): the new file keeps the writer's owner
    os.fchmod(fd, stat.S_IMODE(old.st_mode))  # after chown, which may clear set-id bits


def remove_stale_temps(real: Path) -> list[Path]:
    """Remove temporary files that killed writers of `real` left; call only while holding its lock.

    Only names `.<name>.tmp-<digits>` that are regular files or symlinks are removed."""
    removed = []
    prefix = f".{real.name}{TMP_MARK}"
    try:
        names = os.listdir(real.parent)
    except OSError:
        return removed
    for name in names:
        if name.startswith(prefix) and name[len(prefix) :].isdigit():
            candidate = real.parent / name
            try:
                st = os.lstat(candidate)
                if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                    os.unlink(candidate)
                    removed.append(candidate)
            except OSError:
                pass
    return removed


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- reading ------------------------------------------------------------------------------------
@contextmanager
def open_regular_file(
    path: Path, limit: int, what: str, error: type[WsnError] = WsnError, limit_hint: str = ""
) -> Iterator[tuple[int, int]]:
    """(descriptor, size) of a regular file of at most `limit` bytes, opened without blocking.

    A FIFO, device or folder is refused at once (never read), a file over `limit` before reading."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, not a {what}") from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a FIFO or socket without a writer
            raise error(f"{path}: is not a regular file, not a {what}") from None
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise error(f"{path}: is a folder, not a {what}")
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: is {_describe(st)}, not a {what}")
        if st.st_size > limit:
            raise error(f"{path}: {st.st_size} bytes is over the {limit}-byte limit{limit_hint}")
        yield fd, st.st_size
    finally:
        os.close(fd)


def read_at(fd: int, offset: int, n: int, path: Path, error: type[WsnError] = WsnError) -> bytearray:
    """Exactly `n` bytes from `offset` into one new buffer (no other copy); a file that ends first
    (it shrank while being read) is an error."""
    buf = bytearray(n)
    view, done = memoryview(buf), 0
    try:
        while done < n:
            got = os.preadv(fd, [view[done : done + (1 << 24)]], offset + done)
            if got == 0:
                raise error(f"{path}: ends at byte {offset + done}, before the {offset + n} it declared (truncated)")
            done += got
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    finally:
        view.release()
    return buf


def check_unchanged_size(fd: int, size: int, path: Path, error: type[WsnError] = WsnError) -> None:
    """The file still ends at `size` (it did not grow while being read)."""
    try:
        grown = os.pread(fd, 1, size)
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    if grown:
        raise error(f"{path}: grew while being read; read it again once its writer is done")


def read_regular_file(
    path: Path, limit: int, what: str, error: type[WsnError] = WsnError, limit_hint: str = ""
) -> bytearray:
    """The whole of a regular file of at most `limit` bytes, read once into one buffer of its size.

    A FIFO, device or folder is refused at once (never read), a file over `limit` before reading."""
    with open_regular_file(path, limit, what, error, limit_hint) as (fd, size):
        data = read_at(fd, 0, size, Path(path), error)
        check_unchanged_size(fd, size, Path(path), error)
        return data


def file_prefix(path: Path, n: int) -> bytes:
    """The first n bytes of a regular file (b"" when it cannot be read): to recognise its kind."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        return os.pread(fd, n, 0)
    except OSError:
        return b""
    finally:
        os.close(fd)
