"""`shardgate://NAME@VERSION_OR_TAG/path/in/release` as an fsspec filesystem.

Registered through the `fsspec.specs` entry point, so `fsspec.open`,
pandas, pyarrow, Polars, Hugging Face `datasets` and WebDataset find it by
its protocol. Read-only: every byte returned has been verified against the
release's signed manifest.
"""

from __future__ import annotations

import os
import tempfile
import weakref
from typing import Any

from fsspec.asyn import AsyncFileSystem, sync, sync_wrapper
from fsspec.callbacks import DEFAULT_CALLBACK
from fsspec.spec import AbstractBufferedFile

from .client import Client
from .config import Config
from .errors import ConfigError, DeadlineError, NotFound, ReadError
from .manifest import FileEntry, Release

# What one sequential read of a file object asks the client for, at least.
SEQUENTIAL_BLOCK = 4 << 20

_OURS = (
    "endpoints", "trust", "api_key", "placements", "policy", "deadline", "connect_timeout", "stall_timeout",
    "attempts", "backoff", "cooldown", "cache_bytes", "readahead_bytes", "span_bytes", "max_requests", "tag_ttl",
)


# What fsspec itself takes from storage options, and the generic file options
# loaders pass along (Hugging Face `datasets` sets `block_size`): accepted and
# not used, since reads here always come in whole verified chunks.
_FSSPEC = {
    "skip_instance_cache", "use_listings_cache", "listings_expiry_time", "max_paths", "batch_size",
    "block_size", "cache_type", "cache_options", "default_block_size", "default_cache_type", "default_fill_cache",
}


def split(path: str) -> tuple[str, str, str]:
    """`NAME@SEGMENT/inner` -> (name, segment, inner); raises ValueError naming the problem."""
    path = ShardgateFileSystem._strip_protocol(path)
    head, _, inner = path.partition("/")
    name, at, segment = head.partition("@")
    if not name or not at or not segment:
        raise ValueError(f"{path!r} is not NAME@VERSION_OR_TAG/path (as in shardgate://imagenet@1.4.2/train-0.tar)")
    return name, segment, inner.strip("/")


class ShardgateFileSystem(AsyncFileSystem):
    """Reads releases through shardgate gateways or IPFS/BTFS gateways, verifying every byte.

    Settings are the keys of :class:`shardgate.config.Config`, as keyword
    arguments (`storage_options`), `SHARDGATE_*` variables or the config file.
    """

    protocol = ("shardgate",)
    root_marker = ""
    async_impl = True

    def __init__(self, *args: Any, asynchronous: bool = False, loop=None, **kwargs: Any):
        ours = {k: kwargs.pop(k) for k in list(kwargs) if k in _OURS}
        unknown = sorted(set(kwargs) - _FSSPEC)
        if unknown:
            # A misspelt setting would otherwise be dropped in silence.
            raise ConfigError(f"unknown storage option(s) {', '.join(unknown)}; known: {', '.join(_OURS)}")
        super().__init__(*args, asynchronous=asynchronous, loop=loop, **kwargs)
        self.config = Config.load(ours)
        self.client = Client(self.config)
        if not asynchronous:
            weakref.finalize(self, _close, self.loop, self.client)

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith("shardgate://"):
            path = path[len("shardgate://") :]
        return path.rstrip("/")

    def unstrip_protocol(self, name: str) -> str:
        return "shardgate://" + self._strip_protocol(name)

    async def _resolve(self, path: str) -> tuple[Release, str]:
        name, segment, inner = split(path)
        return await self.client.release(name, segment), inner

    def _entry(self, rel: Release, name: str, segment: str, f: FileEntry) -> dict:
        return {
            "name": f"{name}@{segment}/{f.path}",
            "size": f.size,
            "type": "file",
            "blake3": f.blake3,
            "ETag": f.blake3,
            "media_type": f.media_type,
            "release": rel.id,
            "version": rel.version,
        }

    async def _info(self, path: str, **kwargs) -> dict:
        name, segment, inner = split(path)
        rel = await self.client.release(name, segment)
        f = rel.files.get(inner)
        if f is not None:
            return self._entry(rel, name, segment, f)
        if not inner or rel.under(inner):
            return {"name": f"{name}@{segment}" + (f"/{inner}" if inner else ""), "size": 0, "type": "directory"}
        raise NotFound(f"{rel.label} has no file or directory {inner!r}")

    async def _ls(self, path: str, detail: bool = True, **kwargs):
        name, segment, inner = split(path)
        rel = await self.client.release(name, segment)
        if inner in rel.files:
            out = [self._entry(rel, name, segment, rel.files[inner])]
            return out if detail else [o["name"] for o in out]
        paths = rel.under(inner)
        if inner and not paths:
            raise NotFound(f"{rel.label} has no directory {inner!r}")
        base = f"{name}@{segment}" + (f"/{inner}" if inner else "")
        cut = len(inner) + 1 if inner else 0
        out, dirs = [], set()
        for p in paths:
            rest = p[cut:]
            child, slash, _ = rest.partition("/")
            if slash:
                if child not in dirs:
                    dirs.add(child)
                    out.append({"name": f"{base}/{child}", "size": 0, "type": "directory"})
            else:
                out.append(self._entry(rel, name, segment, rel.files[p]))
        return out if detail else [o["name"] for o in out]

    async def _cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs) -> bytes:
        rel, inner = await self._resolve(path)
        f = self._file(rel, inner)
        start, end = _bounds(start, end, f.size)
        return await self.client.read(rel, f, start, end)

    async def _get_file(self, rpath: str, lpath: str, callback=DEFAULT_CALLBACK, **kwargs) -> None:
        """Downloads one file, verified chunk by chunk, into `lpath` (written beside it, then renamed)."""
        rel, inner = await self._resolve(rpath)
        f = self._file(rel, inner)
        if os.path.isdir(lpath):
            lpath = os.path.join(lpath, os.path.basename(inner))
        callback.set_size(f.size)
        step = max(f.chunk_size, 4 << 20)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(lpath)) or ".", prefix=".shardgate-")
        try:
            with os.fdopen(fd, "wb") as out:
                at = 0
                while at < f.size:
                    data = await self.client.read(rel, f, at, min(f.size, at + step), readahead=True)
                    out.write(data)
                    at += len(data)
                    callback.relative_update(len(data))
            os.chmod(tmp, 0o644)
            os.replace(tmp, lpath)
        except BaseException:
            os.unlink(tmp)
            raise

    def _file(self, rel: Release, inner: str) -> FileEntry:
        f = rel.files.get(inner)
        if f is None:
            raise NotFound(f"{rel.label} has no file {inner!r}")
        return f

    def _open(self, path: str, mode: str = "rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        if mode != "rb":
            raise PermissionError(f"shardgate:// is read-only; mode {mode!r} is not 'rb'")
        rel, inner = sync(self.loop, self._resolve, path)
        return ShardgateFile(self, path, rel, self._file(rel, inner))

    def ukey(self, path: str) -> str:
        return self.info(path)["blake3"]

    async def _pipe_file(self, *args, **kwargs):
        raise PermissionError("shardgate:// is read-only")

    async def _rm_file(self, *args, **kwargs):
        raise PermissionError("shardgate:// is read-only")

    release = sync_wrapper(_resolve)


class ShardgateFile(AbstractBufferedFile):
    """A file of a release. Sequential reads prefetch chunks ahead; random reads use the chunk cache."""

    def __init__(self, fs: ShardgateFileSystem, path: str, rel: Release, f: FileEntry):
        self.rel, self.entry = rel, f
        self._last_end = -1
        # Verified bytes already handed over from the loop: (file offset, bytes).
        self._buf: tuple[int, bytes] = (0, b"")
        super().__init__(fs, path, mode="rb", block_size=f.chunk_size, cache_type="none", size=f.size)

    def _fetch_range(self, start: int, end: int) -> bytes:
        at, buf = self._buf
        if at <= start and end <= at + len(buf):
            self._last_end = end
            return buf[start - at : end - at]
        sequential = start == self._last_end or start == 0
        self._last_end = end
        # A sequential reader takes a few chunks per trip to the event loop
        # (the client prefetches further ahead); a random read takes what it asked.
        stop = min(self.entry.size, max(end, start + SEQUENTIAL_BLOCK)) if sequential else end
        read = self.fs.client.read
        try:
            data = sync(self.fs.loop, read, self.rel, self.entry, start, stop, readahead=sequential)
        except DeadlineError:
            raise
        except ReadError:
            if stop == end:
                raise
            # What failed may lie past what was asked for: that read alone decides.
            stop = end
            data = sync(self.fs.loop, read, self.rel, self.entry, start, end, readahead=sequential)
        if stop > end:
            self._buf = (start, data)
            return data[: end - start]
        return data


def _bounds(start: int | None, end: int | None, size: int) -> tuple[int, int]:
    start = 0 if start is None else (max(0, size + start) if start < 0 else start)
    end = size if end is None else (max(0, size + end) if end < 0 else min(end, size))
    return start, end


def _close(loop, client: Client) -> None:
    if loop is not None and loop.is_running() and not loop.is_closed():
        try:
            sync(loop, client.close, timeout=1)
            return
        except Exception:  # on the loop's own thread, or the loop is stopping
            pass
    client.close_now()
