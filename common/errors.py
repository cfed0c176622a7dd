"""Errors a user can act on. The CLI prints their message as one line, never a traceback."""


class UgaflError(Exception):
    """Base class: the message names the file or field and says what to do. `exit_code` is the
    CLI's exit status for it: 2, a bad input the user can fix."""

    exit_code = 2


class SlideError(UgaflError):
    """A slide cannot be opened, has an implausible resolution, or broke while being read."""


class CheckpointError(UgaflError):
    """A checkpoint is missing, malformed, or fails its content hash."""


class ConfigError(UgaflError):
    """A config file or field is missing or invalid."""


class DataError(UgaflError):
    """A dataset folder or manifest is missing or inconsistent."""


class DownError(UgaflError):
    """What a command reports on, or needs, is not running or not reachable (a daemon, the
    coordinator's SuperLink): not a bad input, so the CLI exits with 3."""

    exit_code = 3
