"""The package's error types: every expected failure is a RefcodecError with a one-line message."""


class RefcodecError(ValueError):
    """Base class of refcodec's own errors (bad input, corrupt or foreign files, missing models)."""
