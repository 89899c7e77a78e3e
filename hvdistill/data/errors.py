"""Errors raised for bad input data, carrying what sharding needs to quarantine a sample."""

from __future__ import annotations


class SampleReadError(RuntimeError):
    """A sample could not be read: names the sample key, the file, and the reason.

    Readers raise it for a missing, truncated or corrupt file, non-finite points or a malformed
    calibration entry; sharding catches it, records `key` and `reason` in the manifest's
    `skipped` list, and goes on.
    """

    def __init__(self, key: str, path: str, reason: str):
        self.key, self.path, self.reason = key, str(path), reason
        super().__init__(f"sample {key}: {reason} ({self.path})")


class DatasetLayoutError(ValueError):
    """A dataset root cannot be opened as the named dataset: says what is missing and the fix.

    Raised once when a source is built (wrong root, missing table version, split naming scenes
    or sequences the dataset lacks), before any sample is read.
    """
