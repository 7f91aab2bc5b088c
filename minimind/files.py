"""Crash-safe file writes (no torch: error paths use them before torch is imported).

Write to a temporary name in the same folder, flush, fsync, then rename over the final name
and fsync the folder: a kill at any instant leaves either the old file or the new one. The
temporary name is ``.<name>.<random>.tmp``; a kill mid-write leaves one behind, which
:func:`remove_stale_temps` deletes when the next run starts in that folder.

``mkstemp`` creates its file with mode 0600 whatever the umask says; the file that replaces
the old one gets the mode a new file gets from ``open()`` (0666 minus the umask), so teammates
on a shared cluster can read weights and summaries as they can read everything else the run
writes (a file written by an older version with 0600 gets the umask's mode when rewritten).
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterable, List

_CHECKPOINT = re.compile(r"^step_(\d+)\.pt$")
_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{6,}\.tmp$")  # what tempfile.mkstemp makes in atomic_write


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _WriteErrors:
    """The file object ``write`` gets: it remembers an OSError from a write. torch's zip writer
    turns a failed write (ENOSPC) into ``RuntimeError("unexpected pos ...")``; with the OSError
    kept, :func:`atomic_write` raises what really happened (a full disk) instead."""

    def __init__(self, f: io.BufferedWriter):
        self._f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str):
        return getattr(self._f, name)


def current_umask() -> int:
    """The process's umask. Linux reports it in /proc (reading it is free of side effects);
    elsewhere it can only be read by setting it, briefly."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: os.PathLike, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write through ``write(fileobj)`` to a temp file beside ``path``, fsync, rename. A failed
    write raises its OSError (ENOSPC, EDQUOT, EIO), whatever ``write`` turned it into."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = 0o666 & ~current_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            recorded = _WriteErrors(f)
            try:
                write(recorded)
            except Exception as e:
                if recorded.error is not None and recorded.error is not e:
                    raise recorded.error from e
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def list_checkpoints(directory: os.PathLike) -> List[Path]:
    """``step_<N>.pt`` files in ``directory``, newest first (no torch: pre-flight checks use it)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def remove_stale_temps(directory: os.PathLike, names: Iterable[str] = ("*",)) -> List[Path]:
    """Delete the temporary files :func:`atomic_write` left in ``directory`` when a kill hit it
    mid-write (``.<name>.<random>.tmp`` for each of ``names``; ``*`` = any name). Only for
    folders this process owns (the run folder, under its lock): a live writer's temp file
    would be pulled from under it. Returns what was removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for name in names:
        for p in directory.glob(f".{name}.*.tmp"):
            if _TEMP.match(p.name) and p.is_file():
                try:
                    p.unlink()
                    removed.append(p)
                except OSError:
                    pass
    return removed


def refuse_used_run_dir(directory: os.PathLike) -> None:
    """``loop.resume=never``: a folder that already holds checkpoints is not overwritten."""
    from minimind.errors import CheckpointError

    found = list_checkpoints(directory)
    if found:
        raise CheckpointError(
            f"loop.resume=never but {directory} holds {len(found)} checkpoint(s) (newest "
            f"{found[0].name}); refusing to overwrite them. Use loop.resume=auto to continue, "
            f"or another hydra.run.dir")
