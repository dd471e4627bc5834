"""A write-ahead journal of the tracking writer, so that no result is lost with the driver.

Every write is appended to `<study_dir>/tracking-spool/<start>-<pid>.jsonl` when it is queued,
and acknowledged there once the store has it. A driver that is killed, or that ends while the
tracking server is away, leaves its file behind; the next launch replays what was never
acknowledged (`read_spools`). Appending a line costs a few microseconds per epoch; the lines
live in the OS's page cache, which survives the death of the process (not of the machine: no
fsync per epoch).

Lines: `{"w": [id, kind, run_id, payload]}` a queued write; `{"ack": [id, ...]}` written;
`{"run": [handle, run_id]}` a trial handle's MLflow run once created.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterable

from wgtune.tracking.records import Write, WriteKind

_log = logging.getLogger(__name__)

SPOOL_FOLDER = "tracking-spool"


class Spool:
    """One writer's journal, locked while its writer lives so that no other launch replays it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / f"{dt.datetime.now():%Y%m%d-%H%M%S-%f}-{os.getpid()}.jsonl"
        self._file: IO[str] | None = None
        self._lock = threading.Lock()  # callers journal writes while the writer thread acknowledges

    def record(self, write_id: int, write: Write) -> None:
        """Journal a queued write (before the store sees it)."""
        self._line({"w": [write_id, write.kind.value, write.run_id, write.payload]})

    def ack(self, write_ids: Iterable[int]) -> None:
        """Mark writes as in the store (or refused for good: replaying them could not help)."""
        ids = list(write_ids)
        if ids:
            self._line({"ack": ids})

    def resolved(self, handle: str, run_id: str) -> None:
        """Record which MLflow run a trial handle became."""
        self._line({"run": [handle, run_id]})

    def close(self, keep: bool) -> None:
        """Close the journal; delete it unless it holds writes the store does not have yet."""
        with self._lock:
            if self._file is None:
                return
            self._file.close()  # releases the lock
            self._file = None
            if not keep:
                self.path.unlink(missing_ok=True)

    def _line(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            if self._file is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the writer's life
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._file.write(line)
            self._file.flush()  # into the OS: a killed process loses nothing it wrote


@dataclass(frozen=True)
class Unwritten:
    """What a dead writer's journal holds that the store never acknowledged."""

    path: Path
    writes: list[Write]
    runs: dict[str, str]  # trial handle -> MLflow run id, for handles created before the end


def read_spools(folder: Path) -> list[Unwritten]:
    """Journals in `folder` that no live writer holds, oldest first, with their unacknowledged writes."""
    found = []
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        with open(path, encoding="utf-8") as file:
            try:
                fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a running launch owns it
            found.append(_parse(path, file.read()))
    return found


def _parse(path: Path, text: str) -> Unwritten:
    writes: dict[int, Write] = {}
    acked: set[int] = set()
    runs: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        try:
            record = json.loads(line)
            if "w" in record:
                write_id, kind, run_id, payload = record["w"]
                writes[write_id] = Write(WriteKind(kind), run_id, _tuples(payload))
            elif "ack" in record:
                acked.update(record["ack"])
            elif "run" in record:
                handle, run_id = record["run"]
                runs[handle] = run_id
        except (ValueError, TypeError, KeyError):
            # The last line of a killed process may be cut short; anything else is not ours.
            _log.warning("tracking spool %s: line %d unreadable, skipped", path, number)
    return Unwritten(path, [w for i, w in sorted(writes.items()) if i not in acked], runs)


def _tuples(value: Any) -> Any:
    """JSON gives lists back; writes hold tuples (hashable, as when first queued)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value
