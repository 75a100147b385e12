"""The live event log: CSV rows appended and fsynced before the API answers 2xx.

Same columns as the store's interaction log (``user_id,item_id,timestamp,event``), so training can read it
with ``shared.data.schema.read_interactions``. Writes go through a ``BatchWorker`` so concurrent requests
share one ``fsync`` (group commit); after a crash the file ends with at most one torn line, which is
terminated on the next open and dropped by the lenient reader.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

from shared.atomic import fsync_dir
from shared.data.schema import COLUMNS

Row = tuple[str, str, int, str]  # user_id, item_id, timestamp, event


class EventLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "ab")  # noqa: SIM115  (kept open for the service's lifetime)
        prefix = b""
        created = self._fh.tell() == 0
        if created:
            prefix = self._encode([COLUMNS])
        else:
            with open(path, "rb") as check:
                check.seek(-1, os.SEEK_END)
                if check.read(1) != b"\n":
                    prefix = b"\n"  # a torn last line from a crash: end it so our rows start clean
        if prefix:
            self._write(prefix)
        if created:
            fsync_dir(path.parent)  # the new file's directory entry must survive a crash too

    @staticmethod
    def _encode(rows: Sequence[Sequence[object]]) -> bytes:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        return buffer.getvalue().encode("utf-8")

    def _write(self, data: bytes) -> None:
        self._fh.write(data)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def append(self, rows: Sequence[Row]) -> None:
        """Append ``rows`` durably: when this returns, they survive a crash or power cut."""
        if rows:
            self._write(self._encode(rows))

    def close(self) -> None:
        self._fh.close()
