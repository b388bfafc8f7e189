"""Errors raised by the shardgate client. Each names what failed and where."""

from __future__ import annotations


class ShardgateError(Exception):
    """Base class of every error the client raises."""


class ConfigError(ShardgateError, ValueError):
    """A setting is missing or malformed; the message names the setting."""


class ManifestError(ShardgateError):
    """A manifest is malformed, not canonical, badly signed, untrusted, or not the release asked for."""


class EncryptedFileError(ShardgateError, PermissionError):
    """The file is encrypted: its table describes ciphertext, and this client holds no data keys."""


class ReadError(ShardgateError, OSError):
    """No endpoint supplied verified bytes in time. `attempts` holds (endpoint, why) for each try."""

    def __init__(self, message: str, attempts: list[tuple[str, str]] | None = None):
        self.attempts = list(attempts or [])
        if self.attempts:
            message += "; tried: " + "; ".join(f"{ep}: {why}" for ep, why in self.attempts)
        super().__init__(message)


class IntegrityError(ReadError):
    """An endpoint served bytes that do not match the signed manifest, and none served the right ones.

    `release`, `path`, `byte_range` (start, end), `chunk` and `endpoint` locate the first bad chunk.
    """

    def __init__(
        self,
        release: str,
        path: str,
        byte_range: tuple[int, int],
        chunk: int,
        endpoint: str,
        why: str,
        attempts: list[tuple[str, str]] | None = None,
    ):
        self.release, self.path, self.byte_range, self.chunk, self.endpoint = release, path, byte_range, chunk, endpoint
        start, end = byte_range
        super().__init__(
            f"{release} {path}: bytes {start}..{end} (chunk {chunk}) from {endpoint} "
            f"do not match the signed manifest ({why}); no byte of them was returned",
            attempts,
        )


class DeadlineError(ReadError):
    """A read did not complete within its deadline.

    Not a `TimeoutError`: fsspec would replace one with its own, losing what timed out.
    """


class TakenDown(ShardgateError, PermissionError):
    """A shardgate gateway answered 451: the release was taken down. No other endpoint is asked."""


class NotFound(ShardgateError, FileNotFoundError):
    """No such dataset, release or file."""
