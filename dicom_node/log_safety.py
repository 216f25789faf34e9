"""Logs a peer cannot forge or flood.

- :func:`peer_text` escapes a peer-supplied string (AE title, UID from a bad dataset, a
  library's error text) before it goes into a message: control characters, backslash and
  anything non-ASCII become ``\\xNN`` / ``\\uNNNN``, and it is cut at 80 characters.
- :class:`SafeFormatter` is the node's log format; it escapes every control character (CR, LF,
  ESC, NUL, DEL...; tab kept) in every message and traceback (defence in depth for strings
  nobody escaped: a library quoting a peer's AE title) and prefixes each traceback line with
  ``  | `` so no text inside an exception can start a line that looks like a log record.
- :class:`LibraryRepeatFilter` caps what the libraries (pynetdicom, pydicom, Python warnings)
  log from one line of their code: a peer that makes pynetdicom log an invalid AE title a
  thousand times gets a few lines and a count.
- :class:`LibraryValueFilter` withholds every quoted value in what the libraries (pydicom,
  highdicom, Python warnings) log: their messages quote dataset values, a patient's name among
  them (highdicom warns "The string "..." is unlikely to represent the intended person
  name"), and a log carries UIDs, never patient data (issue 29).
- :class:`OutageLog` says once that the database stopped answering and once that it answers
  again (with how many requests were refused meanwhile), instead of a line, or a traceback,
  per C-STORE or per worker pass; :class:`OneLineFilter` keeps the tracebacks SQLAlchemy's
  connection pool logs during such an outage out of the log (its one line stays).
- :class:`RejectionLog` summarises refusals: the first refusal of a kind from a source is
  logged, the rest within ``interval_seconds`` are counted and reported on one line when the
  interval ends, so an unauthenticated flood writes a bounded number of lines.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Callable

__all__ = ["configure_logging", "peer_text", "SafeFormatter", "RejectionLog", "LibraryRepeatFilter", "LibraryValueFilter", "LOG_FORMAT",
           "withhold_quoted", "OutageLog", "OneLineFilter", "database_outage"]

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_MAX_PEER_TEXT = 80
#: C0 controls but tab, and DEL, as the escapes ``peer_text`` writes (CR, LF: ``\r``, ``\n``).
_CONTROLS = {code: f"\\x{code:02x}" for code in [*range(0x20), 0x7F] if code != 0x09} | {0x0D: "\\r", 0x0A: "\\n"}
_CONTROLS_BUT_LF = {code: text for code, text in _CONTROLS.items() if code != 0x0A}
#: what ``sys.exc_info()`` returns, as ``logging.Formatter.formatException`` is given it
_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


def peer_text(value: object, limit: int = _MAX_PEER_TEXT) -> str:
    """``value`` as printable ASCII: what a peer sent, safe to put in one log line."""
    text = value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)
    out = []
    for ch in text[: limit + 1]:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    escaped = "".join(out)
    return escaped[:limit] + ("..." if len(text) > limit else "")


class SafeFormatter(logging.Formatter):
    """The node's log line format with control characters escaped and tracebacks fenced."""

    def __init__(self, fmt: str = LOG_FORMAT) -> None:
        super().__init__(fmt)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = record.message.translate(_CONTROLS)
        return super().formatMessage(record)

    def formatException(self, ei: _ExcInfo) -> str:  # noqa: N802
        text = super().formatException(ei).translate(_CONTROLS_BUT_LF)
        return "\n".join("  | " + line for line in text.split("\n"))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return "\n".join("  | " + line for line in stack_info.translate(_CONTROLS_BUT_LF).split("\n"))


@dataclass
class _Window:
    started: float
    count: int = 0


class RejectionLog:
    """One line per (source, reason) per interval: the first refusal, then a count."""

    def __init__(self, logger: logging.Logger, interval_seconds: float = 60.0, max_keys: int = 4096) -> None:
        self.logger = logger
        self.interval = interval_seconds
        self.max_keys = max_keys
        self._windows: dict[tuple[str, str], _Window] = {}
        self._lock = threading.Lock()
        #: Refusals seen, by reason.
        self.totals: dict[str, int] = {}
        #: Called with the reason of every refusal (the node's metrics count them).
        self.on_refusal: Callable[[str], None] | None = None

    def note(self, source: str, reason: str, detail: str = "") -> None:
        """A refusal of ``reason`` (a fixed text) from ``source`` (an address); ``detail`` is
        peer text, escaped here, shown on the first line of the interval only."""
        now = time.monotonic()
        key = (source, reason)
        first = False
        with self._lock:
            self.totals[reason] = self.totals.get(reason, 0) + 1
            expired = self._expired(now)
            window = self._windows.get(key)
            if window is None:
                if len(self._windows) < self.max_keys:
                    self._windows[key] = _Window(now)
                first = True
            else:
                window.count += 1
        if self.on_refusal is not None:
            self.on_refusal(reason)
        for (src, why), count, seconds in expired:
            self._summary(src, why, count, seconds)
        if first:
            suffix = f" ({peer_text(detail)})" if detail else ""
            self.logger.warning("refused %s: %s%s", peer_text(source, 64), reason, suffix)

    def _expired(self, now: float) -> list[tuple[tuple[str, str], int, float]]:
        out = []
        for key, window in list(self._windows.items()):
            if now - window.started >= self.interval:
                del self._windows[key]
                if window.count:
                    out.append((key, window.count, now - window.started))
        return out

    def _summary(self, source: str, reason: str, count: int, seconds: float) -> None:
        self.logger.warning("refused %s: %s, %d more times in the last %.0f s",
                            peer_text(source, 64), reason, count, seconds)

    def flush_expired(self) -> None:
        """Report the counts of intervals that have ended (the node calls this periodically,
        so a flood that stops still gets its count line)."""
        with self._lock:
            expired = self._expired(time.monotonic())
        for (src, why), count, seconds in expired:
            self._summary(src, why, count, seconds)

    def flush(self) -> None:
        """Report the counts of every open interval now (at stop)."""
        with self._lock:
            pending = [(k, w.count, time.monotonic() - w.started) for k, w in self._windows.items() if w.count]
            self._windows.clear()
        for (src, why), count, seconds in pending:
            self._summary(src, why, count, seconds)


class LibraryRepeatFilter(logging.Filter):
    """At most ``burst`` records per library call site per ``interval_seconds``; the next one
    after a quiet spell says how many were held back."""

    LIBRARIES = ("pynetdicom", "pydicom", "py.warnings")

    def __init__(self, burst: int = 5, interval_seconds: float = 60.0) -> None:
        super().__init__()
        self.burst = burst
        self.interval = interval_seconds
        self._sites: dict[tuple[str, int], list[float | int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.LIBRARIES):
            return True
        now = time.monotonic()
        key = (record.pathname, record.lineno)
        with self._lock:
            site = self._sites.get(key)
            if site is None or now - site[0] >= self.interval:
                held = int(site[2]) if site else 0
                if len(self._sites) > 4096:
                    self._sites.clear()
                self._sites[key] = [now, 1, 0]
                if held:
                    record.msg = f"{record.msg} [{held} more like this held back in the last {self.interval:.0f} s]"
                return True
            site[1] += 1
            if site[1] <= self.burst:
                return True
            site[2] += 1
            return False


#: A quoted value in a library's message: "...", '...', or a repr's b'...'.
_QUOTED = re.compile(r"""(?:b)?"(?:[^"\\]|\\.)*"|(?:b)?'(?:[^'\\]|\\.)*'""", re.DOTALL)
WITHHELD = "<value withheld>"


def withhold_quoted(text: str) -> str:
    """``text`` with every quoted value replaced by ``<value withheld>``."""
    return _QUOTED.sub(WITHHELD, text)


class LibraryValueFilter(logging.Filter):
    """Library records (pydicom, highdicom, Python warnings) lose their quoted
    values before they are formatted: a dataset value may be a patient's name or ID. The
    node's own messages name UIDs and are left as they are."""

    LIBRARIES = ("py.warnings", "pydicom", "highdicom")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(self.LIBRARIES):
            record.msg, record.args = withhold_quoted(record.getMessage()), ()
        return True


class OutageLog:
    """One line when a dependency stops answering, one when it answers again."""

    def __init__(self, logger: logging.Logger, what: str, consequence: str) -> None:
        self.logger, self.what, self.consequence = logger, what, consequence
        self.since: float | None = None
        self.count = 0
        self._lock = threading.Lock()

    def failed(self, reason: str) -> None:
        with self._lock:
            first = self.since is None
            if first:
                self.since, self.count = time.monotonic(), 0
            self.count += 1
        if first:
            self.logger.error("%s unavailable (%s): %s", self.what, reason, self.consequence)

    def answered(self) -> None:
        if self.since is None:  # the usual case, without taking the lock
            return
        with self._lock:
            since, count, self.since = self.since, self.count, None
        if since is not None:
            self.logger.warning("%s answers again after %.0f s; %d requests were refused meanwhile", self.what,
                                time.monotonic() - since, count)


#: The receive path's database outages (scp.py reports into it).
database_outage = OutageLog(logging.getLogger("dicom_node.receive.scp"), "database",
                            "C-STOREs are answered 0xA701 (out of resources, retry later) until it answers")


class OneLineFilter(logging.Filter):
    """Records of the named loggers keep their one line and lose their traceback."""

    def __init__(self, prefixes: tuple[str, ...] = ("sqlalchemy.pool",)) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(self.prefixes) and record.exc_info:
            error = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(error).__name__}"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


def configure_logging(level: str) -> None:
    """Handlers are configured here only (by the CLI). Messages carry UIDs, never patient data.

    One format for everything, the node's and its libraries' (``SafeFormatter``: CR/LF in a
    message escaped, traceback lines fenced, so no peer text can start a forged line); Python
    warnings (pydicom's, highdicom's) go through it too instead of raw to stderr, with every
    value they quote withheld (``LibraryValueFilter``: a quoted value may be a patient's name).
    """
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter())
    handler.addFilter(LibraryRepeatFilter())
    handler.addFilter(LibraryValueFilter())  # a library's message may quote a patient's name: withheld
    handler.addFilter(OneLineFilter())  # the connection pool's tracebacks during a database outage
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.captureWarnings(True)
    # pynetdicom at INFO reports every PDU and (for C-FIND/MOVE) identifiers; keep warnings only.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, logging.getLogger().level))
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
