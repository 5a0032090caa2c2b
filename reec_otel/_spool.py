"""The spool: rows that wait on local disk while the database is away.

The writer keeps rows in memory first; during an outage, or when memory fills,
it moves them here, and replays them, oldest first, when the database returns.
Rows are JSON lines. Every process writes a file of its own,
``<pid>-<random>.spool``, holding an exclusive ``flock`` on it for as long as it
owns it, so that processes sharing a directory never read each other's rows.
A file whose lock can be taken belongs to a process that ended before its rows
were written: the next writer on that directory adopts it and replays it before
its own rows. Replaying a row twice is harmless, because the insert is
idempotent on (span_id, state_job); a row is never lost to a crash once it is
in a spool file.

Everything here runs on the writer's thread (or in ``shutdown``), never on an
application's thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Final

from reec_otel._diagnostics import RateLimitedLog
from reec_otel._schema import ROW_COLUMNS

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

Row = Mapping[str, Any]
# A row as a mapping, or a LogJobRow's values as a tuple in column order (as a
# writer queues them); rows read back are always dicts.
Entry = Mapping[str, Any] | tuple[Any, ...]

DEFAULT_SPOOL_MAX_BYTES: Final = 64 * 1024 * 1024
SUFFIX: Final = ".spool"
# Bytes read from a spool file at a time.
_READ_BYTES: Final = 1 << 20

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def default_spool_directory(url_text: str, table: str, application_name: str | None) -> Path:
    """The per-user directory for one application's rows of one table of one database.

    ``$XDG_STATE_HOME/reec_otel/spool`` (else ``~/.local/state/...``), else the
    temporary directory when there is no home. The last part names the
    application and table and carries a hash of the database URL, given here
    with its password already hidden.
    """
    digest = hashlib.sha256(url_text.encode()).hexdigest()[:12]
    leaf = _UNSAFE.sub("_", f"{application_name or 'default'}-{table}-{digest}")[:120]
    state = os.environ.get("XDG_STATE_HOME")
    try:
        base = Path(state) if state else Path.home() / ".local" / "state"
    except RuntimeError:  # no home directory
        base = Path(tempfile.gettempdir()) / f"reec_otel-{os.getuid()}"
    return base / "reec_otel" / "spool" / leaf


def _require_own_directories(directory: Path) -> None:
    """Refuse a spool directory another user owns, or could have swapped.

    In a shared temporary directory another user could create the spool's
    directories first, to read or inject rows; every directory of the path
    below the temporary directory must be this user's.
    """
    shared = Path(tempfile.gettempdir()).resolve()
    path = directory.resolve()
    if shared not in path.parents:
        return
    for part in [path, *path.parents]:
        if part == shared:
            return
        if part.stat().st_uid != os.getuid():
            raise PermissionError(f"{part} belongs to another user; it is not used as a spool")


@dataclasses.dataclass
class _Segment:
    """One spool file being read: an adopted orphan, or this process's own file."""

    path: Path
    handle: IO[bytes]
    offset: int  # where the next unread row starts
    pending: int  # rows not yet consumed


class Spool:
    """Rows on disk, in order, bounded by *max_bytes* for this process's own file.

    Thread-safe; every method may do file I/O. Errors of the file system are
    logged, never raised: a spool that cannot write simply takes no rows.
    """

    def __init__(
        self, directory: str | os.PathLike[str], max_bytes: int = DEFAULT_SPOOL_MAX_BYTES
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._own: _Segment | None = None
        self._own_size = 0
        self._closed = False
        self._peeked: list[int] = []  # end offset of each row returned by the last peek
        self._lost = 0  # damaged rows skipped since take_lost()
        self._warnings = RateLimitedLog(logger)

    @property
    def pending(self) -> int:
        """Rows waiting in the spool, adopted files included."""
        return sum(s.pending for s in self._segments)

    def append(self, rows: Sequence[Entry]) -> int:
        """Append rows in order; return how many fit under the byte cap."""
        with self._lock:
            if self._closed or not rows:
                return 0
            try:
                own = self._own_segment()
            except OSError as exc:
                self._warnings.log(
                    logging.WARNING,
                    "directory",
                    "LogJob spool directory %s is not usable: %s",
                    self.directory,
                    exc,
                )
                return 0
            lines = []
            size = self._own_size
            for row in rows:
                try:
                    line = _encode(row)
                except (TypeError, ValueError):
                    break
                if size + len(line) > self.max_bytes:
                    break
                lines.append(line)
                size += len(line)
            if not lines:
                return 0
            try:
                own.handle.seek(self._own_size)
                own.handle.write(b"".join(lines))
                own.handle.flush()
                os.fsync(own.handle.fileno())
            except OSError as exc:
                self._warnings.log(
                    logging.WARNING,
                    "write",
                    "LogJob spool file %s could not be written: %s",
                    own.path,
                    exc,
                )
                _truncate(own.handle, self._own_size)
                return 0
            self._own_size = size
            own.pending += len(lines)
            return len(lines)

    def make_room(self, rows: Sequence[Entry], keep: Callable[[Row], bool]) -> int:
        """Evict unread rows of this process's file, newest first and never those
        *keep* chooses, until *rows* fit under the cap; return how many went.

        A peek still out is void afterwards: its rows are consumed by no one,
        and those written meanwhile are written again by the next writer, which
        the idempotent insert makes harmless.
        """
        needed = sum(len(_encode(row)) for row in rows)
        with self._lock:
            own = self._own
            if self._closed or own is None or own.pending == 0:
                return 0
            excess = self._own_size + needed - self.max_bytes
            if excess <= 0:
                return 0
            start = own.offset
            own.handle.seek(start)
            # TODO: this reads the unread part of the file into memory at once,
            # up to max_bytes (and as much again as lines) at shutdown. Reading
            # it backwards in blocks and rewriting it in place would bound that.
            lines = own.handle.read(self._own_size - start).splitlines(keepends=True)
            evicted: set[int] = set()
            for index in range(len(lines) - 1, -1, -1):
                if excess <= 0:
                    break
                row = _decode(lines[index])
                if row is not None and keep(row):
                    continue
                evicted.add(index)
                excess -= len(lines[index])
            if not evicted:
                return 0
            kept = b"".join(line for i, line in enumerate(lines) if i not in evicted)
            try:
                own.handle.seek(start)
                own.handle.write(kept)
                own.handle.truncate(start + len(kept))
                own.handle.flush()
                os.fsync(own.handle.fileno())
            except OSError:
                return 0
            self._own_size = start + len(kept)
            own.pending -= len(evicted)
            self._peeked = []
            return len(evicted)

    def peek(self, count: int) -> list[Entry]:
        """The next rows, oldest first, left in the spool until :meth:`consume`."""
        with self._lock:
            self._peeked = []
            if self._closed:
                return []
            while self._segments and self._segments[0].pending == 0:
                if not self._retire(self._segments[0]):
                    break
            if not self._segments or self._segments[0].pending == 0:
                return []
            segment = self._segments[0]
            rows: list[Entry] = []
            # Read in large blocks and count offsets here: a system call per
            # row would hand the interpreter's lock to the application's
            # threads once per row.
            segment.handle.seek(segment.offset)
            position = segment.offset
            data, start, at_end = b"", 0, False
            while len(rows) < count and segment.pending:
                end = data.find(b"\n", start)
                if end < 0 and not at_end:
                    more = segment.handle.read(_READ_BYTES)
                    data, start, at_end = data[start:] + more, 0, not more
                    continue
                stop = len(data) if end < 0 else end + 1
                line, start = data[start:stop], stop
                row = _decode(line)
                if row is None:
                    if rows:
                        break  # the next peek starts at it and skips it
                    self._skip_damaged(segment, position + len(line))
                    position = segment.offset
                    continue
                rows.append(row)
                position += len(line)
                self._peeked.append(position)
            return rows

    def take_lost(self) -> int:
        """How many damaged rows were skipped since the last call."""
        with self._lock:
            lost, self._lost = self._lost, 0
            return lost

    def consume(self, count: int) -> None:
        """Drop the first *count* rows of the last :meth:`peek`: they are written."""
        with self._lock:
            if self._closed or count <= 0 or not self._segments or count > len(self._peeked):
                return  # closed, or the peek was voided by make_room
            segment = self._segments[0]
            segment.offset = self._peeked[count - 1]
            segment.pending -= count
            self._peeked = self._peeked[count:]
            if segment.pending == 0:
                self._retire(segment)

    def _skip_damaged(self, segment: _Segment, next_offset: int) -> None:
        logger.warning("LogJob spool file %s holds an unreadable row; it is skipped.", segment.path)
        segment.offset = next_offset
        segment.pending -= 1
        self._lost += 1

    def adopt_orphans(self) -> int:
        """Take over spool files no living process holds; return their rows."""
        if fcntl is None:
            # TODO: adopt orphaned spool files where fcntl is missing (Windows), with msvcrt locks.
            return 0
        with self._lock:
            if self._closed or not self.directory.is_dir():
                return 0
            mine = {s.path for s in self._segments}
            found = 0
            for path in sorted(self.directory.glob(f"*{SUFFIX}"), key=_age):
                if path in mine:
                    continue
                segment = _open_orphan(path)
                if segment is None:
                    continue
                found += segment.pending
                # Orphans are older than anything of ours: they are read first.
                position = len(self._segments) - (1 if self._own is not None else 0)
                self._segments.insert(position, segment)
            if found:
                logger.info("LogJob spool: replaying %d rows left by ended processes.", found)
            return found

    def close(self) -> None:
        """Release the files; rows still pending stay on disk for the next writer."""
        with self._lock:
            self._closed = True
            for segment in self._segments:
                if segment.pending == 0:
                    # Unlinked while still locked: no other writer adopts an empty file.
                    with contextlib.suppress(OSError):
                        segment.path.unlink()
                _close_quietly(segment.handle)
            self._segments = []
            self._own = None

    def forget_after_fork(self) -> None:
        """In a forked child: let go of the parent's files without touching them."""
        self._lock = threading.Lock()
        for segment in self._segments:
            # Closing our copy leaves the parent's lock and file as they are.
            _close_quietly(segment.handle)
        self._segments = []
        self._own = None
        self._own_size = 0
        self._peeked = []

    # -- internals -------------------------------------------------------------

    def _own_segment(self) -> _Segment:
        if self._own is not None:
            return self._own
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        _require_own_directories(self.directory)
        name = f"{os.getpid()}-{secrets.token_hex(4)}"
        # Locked under a name orphan adoption ignores, then renamed: no other
        # process can take it in between.
        temporary = self.directory / f"{name}.tmp"
        handle = open(temporary, "w+b")  # noqa: SIM115 - kept open while owned
        os.chmod(temporary, 0o600)
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        path = temporary.with_suffix(SUFFIX)
        os.replace(temporary, path)
        self._own = _Segment(path, handle, 0, 0)
        self._own_size = 0
        self._segments.append(self._own)
        return self._own

    def _retire(self, segment: _Segment) -> bool:
        """A fully read segment: delete an orphan; empty our own. False: keep reading it."""
        if segment is self._own:
            if segment.offset < self._own_size:
                return False
            _truncate(segment.handle, 0)
            segment.offset = 0
            self._own_size = 0
            return False
        self._segments.remove(segment)
        with contextlib.suppress(OSError):
            segment.path.unlink()
        _close_quietly(segment.handle)
        return True


def _open_orphan(path: Path) -> _Segment | None:
    try:
        handle = open(path, "r+b")  # noqa: SIM115 - kept open while adopted
    except OSError:
        return None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()  # its process is alive, or another writer adopted it
        return None
    # A last row without its newline is a write its process did not finish.
    # It counts as a row all the same, so that reading it reports it as lost.
    pending = sum(1 for _ in handle)
    return _Segment(path, handle, 0, pending)


def _age(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _truncate(handle: IO[bytes], size: int) -> None:
    with contextlib.suppress(OSError):
        handle.truncate(size)


def _close_quietly(handle: IO[bytes]) -> None:
    with contextlib.suppress(OSError):
        handle.close()


# Rows hold strings, numbers, None, dates and timestamps; JSON lacks the last two.
_DATETIME: Final = "$datetime"
_DATE: Final = "$date"


def entry_as_mapping(entry: Entry) -> Mapping[str, Any]:
    """A row as a mapping of column to value, a LogJobRow's values included."""
    return dict(zip(ROW_COLUMNS, entry, strict=True)) if isinstance(entry, tuple) else entry


def _encode(row: Entry) -> bytes:
    document = dict(entry_as_mapping(row))
    return (_ENCODER.encode(document) + "\n").encode("utf-8")


def _tag(value: object) -> dict[str, str]:
    if isinstance(value, dt.datetime):
        return {_DATETIME: value.isoformat()}
    if isinstance(value, dt.date):
        return {_DATE: value.isoformat()}
    raise TypeError(f"A LogJob row cannot hold a {type(value).__name__}.")


def _decode(line: bytes) -> dict[str, Any] | None:
    if not line.endswith(b"\n"):
        return None
    try:
        value = _DECODER.decode(line.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError included
        return None
    return value if isinstance(value, dict) else None


def _untag(value: dict[str, Any]) -> Any:
    if len(value) == 1:
        if _DATETIME in value:
            return dt.datetime.fromisoformat(value[_DATETIME])
        if _DATE in value:
            return dt.date.fromisoformat(value[_DATE])
    return value


# Made once: json.dumps() and json.loads() given any option build a new
# encoder or decoder on every call, and the writer encodes and decodes every
# row that passes through the spool, while the job's thread waits for the GIL.
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), default=_tag)
_DECODER: Final = json.JSONDecoder(object_hook=_untag)
