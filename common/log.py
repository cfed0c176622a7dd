"""One logger per package: `ugafl`. Library code logs; only the CLI prints."""

import logging

LOGGER_NAME = "ugafl"


def get_logger(name: str = "") -> logging.Logger:
    """The package logger, or a child of it (`ugafl.<name>`)."""
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


def configure(verbose: bool = False) -> None:
    """Send package logs to stderr; used by the CLI only."""
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)


def add_file_log(path) -> None:
    """Package logs also go to PATH, for a person to read: date and time, level, part, message."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    logging.getLogger(LOGGER_NAME).addHandler(handler)
