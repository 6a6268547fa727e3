"""Where robustdistill writes, and what it never touches: ownership markers, --out checks and run locks.

The rule (issue 11): robustdistill deletes or replaces only what it can prove it wrote.

- A directory robustdistill makes for a run (an audit's run directory, the demo's report folder, a training's
  ``<out>.partial`` work folder) holds a marker, ``.robustdistill.json``: the tool, the kind of directory, the
  id of the run that made it and the relative paths of the files robustdistill wrote there. Only those files
  are ever replaced or removed; anything else a user puts in the folder is left alone.
- :func:`claim_out` runs before any work: an ``--out`` under a file, under /proc, /sys or /dev, in a place that
  cannot be written, or an existing folder that is not robustdistill's (no marker of the same kind, not empty,
  and not provably written by an earlier version) is refused with a :class:`UserInputError` (exit 2).
- :func:`acquire` locks a directory while a run uses it (``fcntl.flock`` on ``.robustdistill.lock``, holder
  pid, host and start time inside). The kernel drops the lock when the process ends, so a killed run never
  leaves a stale lock; a second run into the same directory is refused, naming the holder.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from robustdistill.errors import UserInputError

log = logging.getLogger(__name__)

TOOL = "robustdistill"
MARKER = ".robustdistill.json"
LOCK = ".robustdistill.lock"
BOOKKEEPING = frozenset({MARKER, LOCK})
# Pseudo-filesystems and devices: nothing robustdistill writes belongs there.
SYSTEM_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))

# Kinds of directories (the marker's "kind").
AUDIT = "audit"
TRAINING_WORK = "training-work"

Legacy = Callable[[Path], bool]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------------------------
# Checks before any work


def check_location(path: str | os.PathLike[str], field: str = "out") -> None:
    """Refuse an output path robustdistill could not create or write (checked before any work starts)."""
    target = Path(os.path.abspath(Path(path).expanduser()))
    resolved = target.resolve()
    for root in SYSTEM_ROOTS:
        if resolved == root or root in resolved.parents:
            raise UserInputError(field, f"{path} is under {root}, a system folder robustdistill never writes into",
                                 "choose a folder of your own, e.g. under your home or the project")
    existing = target
    while not existing.exists() and not existing.is_symlink():
        existing = existing.parent
    if existing != target and not existing.is_dir():
        raise UserInputError(field, f"{path} cannot be created: {existing} is a file, not a folder",
                             "choose a path whose parent folders are folders")
    folder = existing if existing.is_dir() else existing.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserInputError(field, f"{path} cannot be written: no write permission in {folder}",
                             "choose a folder you can write to")


def claim_out(path: str | os.PathLike[str], kind: str, *, field: str = "out", legacy: Legacy | None = None,
              what: str = "--out") -> Path:
    """Check, before any work, that robustdistill may write the ``kind`` directory ``path``; writes nothing.

    Accepted: a path that does not exist yet (and can be created), an empty folder, a folder with a marker of
    the same kind, or one that ``legacy`` proves an earlier robustdistill wrote (only its own files, no marker).
    """
    path = Path(path)
    check_location(path, field)
    if not path.exists():
        return path
    if not path.is_dir():
        raise UserInputError(field, f"{path} is a file, not a folder", f"choose a folder for {what} that does not exist yet")
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserInputError(field, f"{path} cannot be written: no write permission", "choose a folder you can write to")
    marker = read_marker(path)
    if marker is not None:
        if marker.get("kind") != kind:
            raise UserInputError(field, f"{path} holds a robustdistill {marker.get('kind')}, not a {kind}",
                                 f"choose another {what}")
        return path
    if is_empty(path) or (legacy is not None and legacy(path)):
        return path
    raise UserInputError(field, f"{path} exists and was not written by robustdistill",
                         f"choose a new or empty folder for {what}; robustdistill never writes into folders it did "
                         "not make")


def is_empty(directory: Path) -> bool:
    """No entries but robustdistill's own bookkeeping (a lock file left by a run that wrote nothing)."""
    return all(entry.name in BOOKKEEPING for entry in directory.iterdir())


def files_under(directory: Path) -> list[str]:
    """Every file below ``directory`` as a relative POSIX path, bookkeeping excluded."""
    found = []
    for file in directory.rglob("*"):
        if (file.is_file() or file.is_symlink()) and file.name not in BOOKKEEPING:
            found.append(file.relative_to(directory).as_posix())
    return sorted(found)


# --------------------------------------------------------------------------------------------------------------
# The marker


def lists_exactly_its_files(directory: Path, formats: Iterable[str], record_file: str = "robustdistill.json") -> bool:
    """A model directory a trainer wrote: its ``record_file`` (JSON) has a ``format`` of ``formats`` and lists in
    ``files`` exactly the directory's other files - so nothing of anyone else's has been put in since."""
    if not directory.is_dir() or directory.is_symlink() or not (directory / record_file).is_file():
        return False
    try:
        written = json.loads((directory / record_file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(written, dict) or written.get("format") not in set(formats):
        return False
    if not isinstance(written.get("files"), list):
        return False
    return set(files_under(directory)) == {*map(str, written["files"]), record_file}


def read_marker(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The marker of ``directory``, or None when it has none (or one robustdistill could not have written)."""
    path = Path(directory) / MARKER
    if not path.is_file() or path.is_symlink():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("tool") != TOOL or not isinstance(data.get("files"), list):
        return None
    if not all(isinstance(f, str) and _is_inside(f) for f in data["files"]):
        return None  # a marker naming files outside its folder was not written by robustdistill
    return data


def _is_inside(relative: str) -> bool:
    parts = Path(relative).parts
    return bool(parts) and not Path(relative).is_absolute() and ".." not in parts


def _write_marker(directory: Path, marker: dict[str, Any]) -> None:
    from robustdistill.utils import write_text_atomic  # lazy: robustdistill.utils imports torch

    write_text_atomic(directory / MARKER, json.dumps(marker, indent=2) + "\n")


def adopt(directory: str | os.PathLike[str], kind: str, *, legacy: Legacy | None = None) -> dict[str, Any]:
    """The marker of ``directory`` (creating the folder and the marker when missing) for a run of ``kind``.

    Files already there are recorded only when ``legacy`` proves an earlier robustdistill wrote them; call it
    after :func:`claim_out` accepted the folder.
    """
    directory = Path(directory)
    marker = read_marker(directory)
    if marker is not None:
        return marker
    directory.mkdir(parents=True, exist_ok=True)
    files = files_under(directory) if legacy is not None and legacy(directory) else []
    marker = {"tool": TOOL, "kind": kind, "run_id": uuid.uuid4().hex, "created": _now(), "files": files}
    _write_marker(directory, marker)
    return marker


def record(directory: str | os.PathLike[str], paths: Iterable[str | os.PathLike[str]]) -> None:
    """Add files robustdistill just wrote in ``directory`` (locations such as ``directory / "report.md"``) to its
    marker; a directory without a marker is not robustdistill's to record in."""
    directory = Path(directory)
    marker = read_marker(directory)
    if marker is None:
        return
    listed = set(marker["files"])
    added = {_relative(directory, p) for p in paths} - listed
    if added:
        marker["files"] = sorted(listed | added)
        _write_marker(directory, marker)


def _relative(directory: Path, path: str | os.PathLike[str]) -> str:
    """``path`` (a location: absolute, or relative to the working directory, like ``directory / name``) relative
    to ``directory``, as the marker lists it."""
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(directory))).as_posix()


def owns(directory: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """True when ``directory``'s marker lists the file at ``path`` (a location such as ``directory / name``)."""
    marker = read_marker(directory)
    return marker is not None and _relative(Path(directory), path) in marker["files"]


def remove_owned(directory: str | os.PathLike[str], paths: Iterable[str | os.PathLike[str]] | None = None) -> list[str]:
    """Delete the listed files (all of them when ``paths`` is None) that the marker says robustdistill wrote, and
    the folders that leaves empty; everything else stays. Returns the relative paths removed."""
    directory = Path(directory)
    marker = read_marker(directory)
    if marker is None:
        return []
    listed = set(marker["files"])
    wanted = listed if paths is None else {_relative(directory, p) for p in paths} & listed
    root = directory.resolve()
    for relative in sorted(wanted):
        target = directory / relative
        if root not in target.parent.resolve().parents and target.parent.resolve() != root:
            log.warning("not removing %s: it is not inside %s", target, directory)  # a symlinked folder in between
            continue
        target.unlink(missing_ok=True)
        for parent in target.parents:
            if parent == directory or not parent.is_dir() or any(parent.iterdir()):
                break
            parent.rmdir()
    marker["files"] = sorted(listed - wanted)
    _write_marker(directory, marker)
    return sorted(wanted)


def dispose(directory: str | os.PathLike[str]) -> bool:
    """Remove a robustdistill directory entirely when it holds nothing but files its marker lists; otherwise
    remove only those files and keep the folder with what else is in it. Returns True when the folder is gone."""
    directory = Path(directory)
    if read_marker(directory) is None:
        return False
    remove_owned(directory)
    if files_under(directory):
        log.info("kept %s: it holds files robustdistill did not write", directory)
        return False
    for name in BOOKKEEPING:
        (directory / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        directory.rmdir()
    return not directory.exists()


# --------------------------------------------------------------------------------------------------------------
# Locks


class DirectoryLock:
    """An exclusive lock on a directory, held by this run until :meth:`release`. Locks are per open file, so a
    second run in the same process (another thread, a notebook cell) is refused just like another process."""

    def __init__(self, directory: Path, handle: Any, created: list[Path]) -> None:
        self.directory = directory
        self.handle = handle
        self.created = created  # folders made to hold the lock, deepest first (removed again by undo)

    def release(self) -> None:
        if self.handle.closed:
            return
        with contextlib.suppress(OSError, ValueError):
            self.handle.seek(0)
            self.handle.truncate()
        self.handle.close()  # closing the descriptor drops the flock

    def undo(self) -> None:
        """Release, and remove the bookkeeping and the folders made for this run when it wrote nothing there."""
        self.release()
        marker = read_marker(self.directory)
        if is_empty(self.directory) and (marker is None or not marker["files"]):
            for name in BOOKKEEPING:
                (self.directory / name).unlink(missing_ok=True)
        for folder in self.created:
            with contextlib.suppress(OSError):
                folder.rmdir()


def _holder_text(raw: str) -> str:
    try:
        holder = json.loads(raw)
        return f"{holder['what']} (pid {holder['pid']} on {holder['host']}, started {holder['started']})"
    except (ValueError, KeyError, TypeError):
        return "another robustdistill run"


def holder(directory: str | os.PathLike[str]) -> str | None:
    """Who holds the lock of ``directory`` right now, or None when nobody does (writes nothing)."""
    path = Path(directory) / LOCK
    if not path.is_file():
        return None
    with open(path, encoding="utf-8", errors="replace") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_text(handle.read())
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def refuse_if_held(directory: str | os.PathLike[str], field: str = "out") -> None:
    """Raise (exit 2, naming the holder) when another run holds ``directory``'s lock."""
    held_by = holder(directory)
    if held_by is not None:
        raise _in_use(directory, held_by, field)


def _in_use(directory: str | os.PathLike[str], held_by: str, field: str) -> UserInputError:
    return UserInputError(field, f"{directory} is in use by {held_by}", "wait for that run to finish, or choose another folder")


def acquire(directory: str | os.PathLike[str], what: str, *, field: str = "out") -> DirectoryLock:
    """Lock ``directory`` (created if missing) for this run; raise, naming the holder, if another run has it."""
    directory = Path(directory)
    created = [p for p in (directory, *directory.parents) if not p.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    # O_NOFOLLOW: a lock "file" that is a symlink planted in the folder must not make us truncate its target.
    try:
        fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise UserInputError(field, f"cannot lock {directory}: {exc.strerror}",
                             f"remove {directory / LOCK} if it is not robustdistill's, or choose another folder") from None
    handle = os.fdopen(fd, "r+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        held_by = _holder_text(handle.read())
        handle.close()
        raise _in_use(directory, held_by, field) from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"what": what, "pid": os.getpid(), "host": socket.gethostname(), "started": _now()}))
    handle.flush()
    return DirectoryLock(directory, handle, created)


@contextlib.contextmanager
def using(directory: str | os.PathLike[str], kind: str, what: str, *, legacy: Legacy | None = None,
          field: str = "out") -> Iterator[dict[str, Any]]:
    """Lock ``directory`` and make sure it carries this ``kind``'s marker for the block (call :func:`claim_out`
    first). If the block fails before robustdistill recorded any file there, the folder is left as it was found
    (a folder made for the run is removed again)."""
    lock = acquire(directory, what, field=field)
    try:
        yield adopt(directory, kind, legacy=legacy)
    except BaseException:
        marker = read_marker(directory)
        if marker is None or not marker["files"]:
            lock.undo()
        raise
    finally:
        lock.release()


# --------------------------------------------------------------------------------------------------------------
# What earlier versions (no marker) wrote: accepted only when every file in the folder is one of theirs


def claim_training_work(out: Path, resume: bool) -> Path:
    """A trainer's ``<out>.partial`` work folder, checked before any work: absent or robustdistill's, not held by a
    running trainer, and there only for ``resume`` (an interrupted run is never silently restarted or continued)."""
    work = out.with_name(out.name + ".partial")
    claim_out(work, TRAINING_WORK, legacy=is_legacy_training_work, what="the interrupted-run folder")
    refuse_if_held(work)
    if work.exists() and not resume:
        raise UserInputError("--resume", f"an interrupted run is kept in {work}",
                             f"add --resume to continue it, or delete {work} to start over")
    return work


def is_tmp_leftover(name: str) -> bool:
    """A temporary file of an interrupted atomic write (``.<name>.<random>.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp")


def is_legacy_audit(directory: Path) -> bool:
    """An audit run directory of an earlier version: a results.jsonl that starts with a manifest holding a plan,
    and nothing but the files an audit writes (report.*, plots/*.png, artifacts/*)."""
    results = directory / "results.jsonl"
    if not results.is_file() or results.is_symlink():
        return False
    try:
        with open(results, encoding="utf-8") as handle:
            first = json.loads(handle.readline())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    if not isinstance(first, dict) or first.get("type") != "manifest" or not isinstance(first.get("plan"), list):
        return False
    for relative in files_under(directory):
        parts = relative.split("/")
        audit_file = (len(parts) == 1 and parts[0] in ("results.jsonl", "report.json", "report.md", "report.html")
                      or parts[0] == "plots" and len(parts) == 2 and parts[1].endswith(".png")
                      or parts[0] == "artifacts" or is_tmp_leftover(parts[-1]))
        if not audit_file or (directory / relative).is_symlink():
            return False
    return True


def is_legacy_training_work(directory: Path) -> bool:
    """A ``<out>.partial`` work folder of an earlier version: the per-epoch state ``last.pt`` and nothing else."""
    names = files_under(directory)
    return "last.pt" in names and all(n == "last.pt" or is_tmp_leftover(n) for n in names)
