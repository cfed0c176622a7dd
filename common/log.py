"""One logger per package: `ugafl`. Library code logs; only the CLI prints.

A long job (the demo, a simulation) reports what a person watches it by, one line per stage or
round, on the `ugafl.progress` logger (`PROGRESS`); inside `progress_console` the terminal shows
only those lines and warnings, and everything else the package logs goes to the run's log file."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from logging.handlers import RotatingFileHandler

LOGGER_NAME = "ugafl"
PROGRESS = f"{LOGGER_NAME}.progress"  # one line per stage or round of a long job
_CONSOLE = "ugafl-console"  # the name of the stderr handler `configure` adds


def get_logger(name: str = "") -> logging.Logger:
    """The package logger, or a child of it (`ugafl.<name>`)."""
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


class _ConsoleFormatter(logging.Formatter):
    """Time, level, part and message; a progress line is only its time and message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        self._progress = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return self._progress.format(record) if record.name == PROGRESS else super().format(record)


def configure(verbose: bool = False) -> None:
    """Send package logs to stderr; used by the CLI only."""
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.set_name(_CONSOLE)
        handler.setFormatter(_ConsoleFormatter())
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)


LOG_MAX_BYTES = 10 * 1024 * 1024  # a log file is rotated when it reaches 10 MiB ...
LOG_BACKUPS = 5  # ... keeping PATH.1 (the newest) to PATH.5: at most 60 MiB a log, for months of running


class _FileHandler(RotatingFileHandler):
    """A size-rotated file handler that makes the file's folder when it opens the file."""

    def _open(self):
        from pathlib import Path

        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def add_file_log(path, delay: bool = False, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS) -> logging.Handler:
    """Package logs also go to PATH, for a person to read: date and time, level, part, message.
    With `delay`, the file (and its folder) is made with the first record, not now. The file is
    rotated when it would pass `max_bytes` (PATH -> PATH.1 -> ... -> PATH.`backups`, the oldest
    dropped), so a daemon running for months (the site's WS/logs/site.log, the coordinator's
    logs/coordinator.log) never fills the disk; one process writes each log (a daemon's children
    log through it). Returns the handler (to remove it again: `get_logger().removeHandler(handler)`,
    then close it)."""
    handler = _FileHandler(path, encoding="utf-8", delay=delay, maxBytes=max_bytes, backupCount=backups)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    logging.getLogger(LOGGER_NAME).addHandler(handler)
    return handler


def _progress_or_warning(record: logging.LogRecord) -> bool:
    return record.name == PROGRESS or record.levelno >= logging.WARNING


@contextmanager
def progress_console(log_file, verbose: bool = False) -> Iterator[None]:
    """While inside: every package log also goes to LOG_FILE (made with the first record, so that a
    job refused before it starts writes nothing), and the terminal (the handler of `configure`)
    shows only progress lines (`PROGRESS`), warnings and errors. With `verbose` the terminal shows
    everything, as outside."""
    logger = logging.getLogger(LOGGER_NAME)
    file_handler = add_file_log(log_file, delay=True)
    consoles = [] if verbose else [h for h in logger.handlers if h.get_name() == _CONSOLE]
    for handler in consoles:
        handler.addFilter(_progress_or_warning)
    try:
        yield
    finally:
        for handler in consoles:
            handler.removeFilter(_progress_or_warning)
        logger.removeHandler(file_handler)
        file_handler.close()
