"""What kind of failure an exception is: transient (worth retrying: a locked SQLite database, a tracking
server that is down or answers 429/5xx) or a full or read-only disk (a user error naming the path).

`transient_reason` is what the stage tasks' retry condition asks (tasks/retries.py `is_transient`);
`storage_errors` turns a disk-full or permission error into a `StorageError` where a stage or the
pipeline writes (the state directory: artifact store, checkpoints, the MLflow store). Both look through
the whole chain of causes, since MLflow and SQLAlchemy wrap the error that matters. A library that was
never imported cannot have raised, so its exception types are looked up in `sys.modules` only.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lifecycle.errors import LifecycleError, StorageError

Where = Path | str | list[Path] | None  # the folder(s) a failed write was under, when the error names no file
# errno -> (what happened, what to do)
STORAGE_ERRNOS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on device", "free some space or point --state-dir elsewhere"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or point --state-dir elsewhere"),
    errno.EACCES: ("permission denied", "make it writable for this user or point --state-dir elsewhere"),
    errno.EPERM: ("operation not permitted", "make it writable for this user or point --state-dir elsewhere"),
    errno.EROFS: ("read-only file system", "point --state-dir at a writable folder"),
}
# the same errors as SQLite and Arrow word them (no errno on the exception)
_STORAGE_TEXT = ((re.compile(r"database or disk is full|no space left on device", re.I), errno.ENOSPC),
                 (re.compile(r"attempt to write a readonly database|read-only file system", re.I), errno.EROFS),
                 (re.compile(r"disk quota exceeded", re.I), errno.EDQUOT))
_ERRNO_TEXT = re.compile(r"\[errno (\d+)\]", re.I)
# what a transient failure says, most telling first ("Max retries exceeded ... Connection refused")
_TRANSIENT_PHRASES = ("database is locked", "database table is locked", "database is busy", "connection refused",
                      "connection reset", "connection aborted", "remote end closed connection",
                      "server closed the connection", "could not connect", "terminating connection", "timed out",
                      "temporary failure in name resolution", "max retries exceeded")
_HTTP_STATUS_TEXT = re.compile(r"error code (\d{3}) != 200|too many (\d{3}) error responses", re.I)
_TRANSIENT_MLFLOW_CODES = {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED"}


def causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what it was raised from or while handling, outermost first (each once)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def storage_failure(exc: BaseException) -> tuple[int, str | None] | None:
    """(errno, path or None) of the first disk-full or permission error in `exc`'s chain, else None."""
    for err in causes(exc):
        code = err.errno if isinstance(err, OSError) else None
        text = str(err)
        if code is None and (found := _ERRNO_TEXT.search(text)):
            code = int(found[1])
        if code is None:
            code = next((value for pattern, value in _STORAGE_TEXT if pattern.search(text)), None)
        if code in STORAGE_ERRNOS:
            path = getattr(err, "filename", None) if isinstance(err, OSError) else None
            return code, None if path is None else str(path)
    return None


def storage_error(exc: BaseException, what: str | None, where: Where) -> StorageError | None:
    """The user error for a disk-full or permission error in `exc`'s chain: it names the path, or, when the
    library did not say which file (Arrow, SQLite), the folder among `where` that was being written under (the
    one on the fullest, or the read-only, file system). None for any other error."""
    found = storage_failure(exc)
    if found is None:
        return None
    code, path = found
    happened, advice = STORAGE_ERRNOS[code]
    folders = [Path(w) for w in ([where] if isinstance(where, (str, Path)) else where or [])]
    if path:
        target = f"'{path}'"
    elif folder := _likely_folder(folders, code):
        target = f"under '{folder}'"
    else:
        target = "to the state directory"
    return StorageError(f"{what + ': ' if what else ''}{happened} while writing {target} ({advice})")


def _likely_folder(folders: list[Path], code: int) -> Path | None:
    """The folder (or its nearest existing parent) on the fullest file system for ENOSPC/EDQUOT, on a read-only
    one for EROFS; else the first."""
    stats = []
    for folder in folders:
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if existing is not None:
            stats.append((folder, os.statvfs(existing)))
    if not stats:
        return folders[0] if folders else None
    if code in (errno.ENOSPC, errno.EDQUOT):
        return min(stats, key=lambda item: item[1].f_bavail * item[1].f_frsize)[0]
    if code == errno.EROFS:
        return next((folder for folder, st in stats if st.f_flag & os.ST_RDONLY), stats[0][0])
    return stats[0][0]


@contextmanager
def storage_errors(what: str | None, where: Where) -> Iterator[None]:
    """Raise a disk-full or permission error from inside as a `StorageError` (see `storage_error`)."""
    try:
        yield
    except LifecycleError:
        raise
    except Exception as err:
        problem = storage_error(err, what, where)
        if problem is None:
            raise
        raise problem from None


@contextmanager
def unavailable(what: str, where: str, hint: str) -> Iterator[None]:
    """Raise a transient failure from inside (one the retries did not outlast, or outside any retry) as a user
    error naming the service and where it is, instead of a traceback."""
    try:
        yield
    except LifecycleError:
        raise
    except Exception as err:
        reason = transient_reason(err)
        if reason is None:
            raise
        raise LifecycleError(f"{what} at {where} is unavailable ({reason}); {hint}") from None


def transient_reason(exc: BaseException) -> str | None:
    """A short reason ("database is locked", "connection refused", "HTTP 503") when `exc` is a transient
    failure worth retrying; None for anything else: a user error, a full or read-only disk, a bug."""
    chain = list(causes(exc))
    if any(isinstance(err, LifecycleError) for err in chain) or storage_failure(exc):
        return None
    for err in reversed(chain):  # the root cause first: it says what happened
        if reason := _transient(err):
            return reason
    return None


def _transient(err: BaseException) -> str | None:
    text = str(err)
    if isinstance(err, _types("sqlite3.OperationalError", "sqlalchemy.exc.OperationalError",
                              "sqlalchemy.exc.DisconnectionError", "sqlalchemy.exc.TimeoutError")):
        return _phrase(text)
    if isinstance(err, (ConnectionError, TimeoutError)) or isinstance(err, _types(
            "requests.exceptions.ConnectionError", "requests.exceptions.Timeout", "requests.exceptions.RetryError",
            "urllib3.exceptions.HTTPError", "httpx.TransportError")):
        if found := _HTTP_STATUS_TEXT.search(text):
            return f"HTTP {found[1] or found[2]}"
        return _phrase(text) or type(err).__name__
    if isinstance(err, _types("httpx.HTTPStatusError")):
        status = err.response.status_code
        return f"HTTP {status}" if status == 429 or status >= 500 else None
    if isinstance(err, _types("mlflow.exceptions.MlflowException")):
        if err.error_code in _TRANSIENT_MLFLOW_CODES:
            return _phrase(text) or err.error_code
        found = _HTTP_STATUS_TEXT.search(text)
        if found and (int(found[1] or found[2]) == 429 or int(found[1] or found[2]) >= 500):
            return f"HTTP {found[1] or found[2]}"
    return None


def _phrase(text: str) -> str | None:
    lowered = text.lower()
    return next((phrase for phrase in _TRANSIENT_PHRASES if phrase in lowered), None)


def _types(*names: str) -> tuple[type, ...]:
    """The exception classes among `names` ("module.Class") whose module is imported."""
    found = []
    for name in names:
        module, _, cls = name.rpartition(".")
        if module in sys.modules and isinstance(value := getattr(sys.modules[module], cls, None), type):
            found.append(value)
    return tuple(found)
