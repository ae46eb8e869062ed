"""Temporary files onnxq writes beside its outputs, and the removal of stale ones.

Every temporary file onnxq creates next to an output (a model, its external data, an
importance matrix, the calibration copy of a model with external data) is named

    .<target>.onnxq-<pid>-<random>.tmp

and stays locked (``flock``) by the process that owns it until it is renamed into place
or removed. A process killed with SIGKILL (or a power cut) cannot remove it, so the next
onnxq run that writes into the same folder calls :func:`remove_stale` first, which
deletes exactly the files that

* match that pattern (nothing else in the folder is ever touched), and
* belong to a process that is gone: no process with that pid exists here, and the file's
  lock can be taken (the lock also protects a live writer whose pid this process cannot
  see, e.g. from another container sharing the folder, and a pid that was reused).
"""
from __future__ import annotations

import os
import re
import secrets
from typing import IO, List, Optional

try:  # POSIX; on Windows the pid check alone decides
    import fcntl
except ImportError:  # pragma: no cover - not on the Linux/macOS builds onnxq tests
    fcntl = None  # type: ignore[assignment]

#: ``.<target>.onnxq-<pid>-<random>.tmp``, and the ``.data`` sidecar of such a file when it is an
#: intermediate model with external data (``quantize --portable``): the only names
#: :func:`remove_stale` deletes
STALE_PATTERN = re.compile(r"^\..+\.onnxq-(?P<pid>[0-9]+)-[0-9a-f]{8}\.tmp(\.data)?$")


def temp_name(target: str) -> str:
    """The base name of a new temporary file for ``target`` (a file name, no folder)."""
    return f".{target}.onnxq-{os.getpid()}-{secrets.token_hex(4)}.tmp"


class TempFile:
    """A locked temporary file beside its target: ``write``, then ``commit`` (rename into
    place) or ``discard``."""

    def __init__(self, folder: str, target: str):
        while True:
            self.path = os.path.join(folder, temp_name(target))
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:  # pragma: no cover - 32 random bits collided
                continue
            break
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.file: IO[bytes] = os.fdopen(fd, "wb")
        except BaseException:  # e.g. Ctrl-C right here: no file without an owner
            os.close(fd)
            os.unlink(self.path)
            raise

    def write(self, data: bytes) -> int:
        return self.file.write(data)

    def commit(self, destination: str) -> None:
        """Flush to disk and rename onto ``destination`` (the lock is held until then)."""
        self.file.flush()
        os.fsync(self.file.fileno())
        os.chmod(self.path, 0o644)  # whatever the umask: a model file is meant to be shared
        os.replace(self.path, destination)
        self.file.close()

    def discard(self) -> None:
        """Close and delete (idempotent; after a commit it only closes)."""
        try:
            self.file.close()
        finally:
            if os.path.lexists(self.path):
                os.unlink(self.path)

    def __enter__(self) -> "TempFile":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self.file.closed:
            self.discard()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OverflowError:
        return False
    return True


def _claim(path: str) -> Optional[int]:
    """An fd holding the lock of ``path`` when no live process holds it, else None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    if fcntl is None:
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def remove_stale(folder: str) -> List[str]:
    """Delete onnxq's temporary files in ``folder`` whose writer is gone; returns their paths.

    Errors (a folder that cannot be listed, a file removed meanwhile) are not errors here:
    this is housekeeping before real work, which reports its own problems.
    """
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    removed = []
    for name in names:
        match = STALE_PATTERN.match(name)
        if match is None or _pid_alive(int(match.group("pid"))):
            continue
        path = os.path.join(folder, name)
        if not os.path.isfile(path) or os.path.islink(path):
            continue
        fd = _claim(path)
        if fd is None:
            continue
        try:
            os.unlink(path)
            removed.append(path)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed
