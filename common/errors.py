"""Errors a user can act on. The CLI prints their message as one line, never a traceback."""


class UgaflError(Exception):
    """Base class: the message names the file or field and says what to do."""


class SlideError(UgaflError):
    """A slide cannot be opened, has an implausible resolution, or broke while being read."""


class CheckpointError(UgaflError):
    """A checkpoint is missing, malformed, or fails its content hash."""


class ConfigError(UgaflError):
    """A config file or field is missing or invalid."""


class DataError(UgaflError):
    """A dataset folder or manifest is missing or inconsistent."""
