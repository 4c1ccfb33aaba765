"""The root of wsn's exception hierarchy (lives here because formats is the lowest layer)."""


class WsnError(Exception):
    """An error wsn raises on purpose; the CLI prints it as one line and exits with `exit_code`."""

    exit_code = 1


class FormatError(WsnError):
    """A packed-mask file or codec stream is malformed, truncated, corrupt or over a limit."""
