"""The one exception type that user-facing commands turn into a one-line message."""

from __future__ import annotations


class FeatureStoreError(Exception):
    """A problem with the user's input: a missing source, an unknown layout or target,
    an incompatible store. The command line prints ``str(error)`` and exits non-zero,
    without a traceback."""
