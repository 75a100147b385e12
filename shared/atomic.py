"""Crash-safe file replacement.

Models, catalogs, privacy ledgers and data files must never be left half-written: a reader either sees
the old complete file or the new complete file. The recipe is the classic one: write a temp file in the
same directory (so the rename cannot cross file systems), fsync it, ``os.replace`` it over the target,
then fsync the directory so the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "fsync_dir"]


def _fsync_file(path: Path) -> None:
    # The writer may have closed its handle without fsync (pandas, pyarrow); a read-only fd is enough
    # for fsync on POSIX to flush the file's dirty pages.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    # Directory fsync is what makes the rename durable; some platforms (Windows) cannot open a
    # directory, and losing durability there is better than failing the write.
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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success it replaces ``path``, on error it is removed.

    The temp name ends with the target's name, so writers that infer the format from the suffix
    (``.csv.gz``, ``.parquet``) behave as if they wrote the target itself.
    """
    target = Path(path)
    directory = target.parent
    # Created with O_EXCL and mode 0o666 so the umask applies as for a normal file (mkstemp would
    # leave the final file 0600).
    while True:
        tmp = directory / f".tmp-{secrets.token_hex(6)}-{target.name}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        break
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(directory)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Replace ``path`` with ``text`` atomically (no newline translation, so bytes are predictable)."""
    atomic_write_bytes(path, text.encode(encoding))
