"""The verifying reader: releases, chunk tables and chunks from any endpoint,
each checked against the signed manifest before a byte is handed out.

Everything here runs on one asyncio loop. Hashing runs on a thread pool
(the native module and the `blake3` binding release the GIL), so the loop
keeps reading sockets while chunks are checked.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, TypeVar

import aiohttp

from . import _native
from .config import Config
from .endpoints import Endpoint, backoff, order
from .errors import DeadlineError, EncryptedFileError, IntegrityError, ManifestError, NotFound, ReadError, TakenDown
from .manifest import (
    FileEntry,
    Release,
    apply_placement,
    b3hex,
    is_version,
    placement_manifest_cid,
    verify_manifest,
)

T = TypeVar("T")
MAX_MANIFEST = 64 << 20
MAX_PLACEMENT = 64 << 20
# A 200 answer to a ranged request is read past its start only this far.
MAX_SKIP = 64 << 20
# Chunks are read from a response and checked in batches of this many bytes.
BATCH_BYTES = 2 << 20


class _Status(Exception):
    """An endpoint answered with an HTTP status that is not the bytes asked for."""

    def __init__(self, status: int, body: str):
        self.status = status
        super().__init__(f"HTTP {status}" + (f": {body}" if body else ""))


class _BadChunk(Exception):
    def __init__(self, index: int, why: str):
        self.index = index
        self.why = why
        super().__init__(why)


class ChunkCache:
    """Verified chunks by (file BLAKE3, chunk size, index), least recently used out first, bounded in bytes."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.size = 0
        self._d: collections.OrderedDict[tuple[str, int, int], bytes] = collections.OrderedDict()

    def get(self, key: tuple[str, int, int]) -> bytes | None:
        data = self._d.get(key)
        if data is not None:
            self._d.move_to_end(key)
        return data

    def __contains__(self, key: tuple[str, int, int]) -> bool:
        return key in self._d

    def put(self, key: tuple[str, int, int], data: bytes) -> None:
        if self.capacity <= 0 or len(data) > self.capacity or key in self._d:
            return
        self._d[key] = data
        self.size += len(data)
        while self.size > self.capacity:
            _, old = self._d.popitem(last=False)
            self.size -= len(old)


class Client:
    """One set of endpoints, trusted keys and caches. Use its coroutines on one event loop."""

    def __init__(self, config: Config, placement_hints: dict[str, bytes] | None = None):
        self.config = config
        # "NAME@VERSION" -> placement.json bytes learnt elsewhere (the CLI's per-endpoint drill).
        self.placement_hints = dict(placement_hints or {})
        self.endpoints = [Endpoint(s, config.api_key) for s in config.endpoints]
        self.cache = ChunkCache(config.cache_bytes)
        self._session: aiohttp.ClientSession | None = None
        self._releases: dict[tuple[str, str], tuple[Release, float]] = {}
        self._release_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._tables: collections.OrderedDict[tuple, _native.ChunkTable] = collections.OrderedDict()
        self._inflight: dict[tuple[str, int, int], asyncio.Future] = {}
        self._tasks: set[asyncio.Task] = set()
        self._sem: asyncio.Semaphore | None = None

    # ----------------------------------------------------------------- plumbing

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            c = self.config
            timeout = aiohttp.ClientTimeout(
                total=None, connect=c.connect_timeout, sock_connect=c.connect_timeout, sock_read=c.stall_timeout
            )
            self._session = aiohttp.ClientSession(
                timeout=timeout,
                auto_decompress=False,
                connector=aiohttp.TCPConnector(limit=max(16, c.max_requests * 2)),
                headers={"Accept-Encoding": "identity", "User-Agent": "shardgate-python/0.1"},
            )
            self._sem = asyncio.Semaphore(c.max_requests)
        return self._session

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._session is not None and not self._session.closed:
            await self._session.close()

    def close_now(self) -> None:
        """Closes the connections without the event loop (at garbage collection)."""
        if self._session is not None and self._session.connector is not None:
            self._session.connector._close()

    async def _hash(self, fn: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(_hash_pool(), fn, *args)

    def _remaining(self, deadline: float) -> float:
        return deadline - time.monotonic()

    async def _get_small(self, ep: Endpoint, url: str, limit: int) -> bytes:
        """A whole small document (manifest, placement, chunk table), at most `limit` bytes."""
        session = await self.session()
        assert self._sem is not None
        async with self._sem:
            t0 = time.monotonic()
            async with session.get(url, headers=ep.headers) as resp:
                if resp.status != 200:
                    raise _Status(resp.status, (await resp.content.read(300)).decode("utf-8", "replace").strip())
                ep.observe(time.monotonic() - t0)
                return await _body(resp, limit)

    def _fail(self, ep: Endpoint, e: BaseException, attempts: list[tuple[str, str]], what: str = "") -> None:
        """Records a failed request; a 404 or 403 is an answer, not a sick endpoint.

        A 451 from a shardgate gateway is a takedown: it ends the read (no other
        endpoint is asked for what the publisher withdrew).
        """
        why = _describe(e)
        if isinstance(e, _Status) and e.status == 451:
            raise TakenDown(f"{what}: {ep.label} says it was taken down: {why}")
        attempts.append((ep.label, why))
        if isinstance(e, _Status) and e.status in (401, 403, 404, 410, 451):
            return
        ep.failed(self.config.cooldown, at_once=isinstance(e, (asyncio.TimeoutError, _BadChunk)))

    # ----------------------------------------------------------------- releases

    async def release(self, name: str, segment: str) -> Release:
        """The verified release `name@segment` (a version, or a tag a gateway resolves)."""
        key = (name, segment)
        hit = self._releases.get(key)
        if hit and hit[1] > time.monotonic():
            return hit[0]
        try:
            # The deadline covers waiting for another caller loading the same release.
            return await asyncio.wait_for(self._release_once(name, segment), self.config.deadline)
        except asyncio.TimeoutError:
            raise DeadlineError(
                f"{name}@{segment}: no verified manifest within the {self.config.deadline} s deadline"
            ) from None

    async def _release_once(self, name: str, segment: str) -> Release:
        key = (name, segment)
        lock = self._release_locks.setdefault(key, asyncio.Lock())
        async with lock:
            hit = self._releases.get(key)
            if hit and hit[1] > time.monotonic():
                return hit[0]
            rel = await self._load_release(name, segment)
            ttl = float("inf") if is_version(segment) else self.config.tag_ttl
            self._releases[key] = (rel, time.monotonic() + ttl)
            self._releases[(name, rel.version)] = (rel, float("inf"))
            return rel

    async def _load_release(self, name: str, segment: str) -> Release:
        version = segment if is_version(segment) else None
        configured = self.config.placements.get(f"{name}@{segment}")
        placement: bytes | None = self.placement_hints.get(f"{name}@{segment}")
        manifest_cid = expected_id = None
        source = configured or "(known placement)"
        if placement is not None and version is not None:
            manifest_cid, expected_id = placement_manifest_cid(placement, name, segment, source)
        if configured is not None:
            if version is None:
                raise ManifestError(f"placements: {name}@{segment} names a tag; a placement belongs to a version")
            placement = await self._read_source(configured)
            manifest_cid, expected_id = placement_manifest_cid(placement, name, segment, configured)
        attempts: list[tuple[str, str]] = []
        rel = None
        bad_manifest = False
        for ep in order(self.endpoints, self.config):
            if ep.kind != "shardgate" and version is None:
                attempts.append((ep.label, f"{segment!r} is a tag; only a shardgate gateway resolves tags"))
                continue
            url = ep.manifest_url(name, segment, manifest_cid)
            if url is None:
                attempts.append((ep.label, "no placement gives the manifest's CID"))
                continue
            try:
                data = await self._get_small(ep, url, MAX_MANIFEST)
                got = verify_manifest(data, self.config.trust, name, version)
                if expected_id is not None and got.id != expected_id:
                    raise ManifestError(f"manifest is release {got.id}, but the placement names release {expected_id}")
                rel = got
                ep.succeeded()
                break
            except ManifestError as e:
                # A gateway that serves a manifest that does not check out is lying or broken.
                bad_manifest = True
                attempts.append((ep.label, str(e)))
                ep.failed(self.config.cooldown, at_once=True)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, _Status) as e:
                self._fail(ep, e, attempts, f"{name}@{segment}")
        if rel is None:
            if attempts and all("HTTP 404" in why for _, why in attempts):
                raise NotFound(f"{name}@{segment}: no endpoint serves it; " + "; ".join(f"{e}: {w}" for e, w in attempts))
            if bad_manifest:
                raise ManifestError(
                    f"{name}@{segment}: no endpoint served a manifest signed by a trusted key; "
                    + "; ".join(f"{e}: {w}" for e, w in attempts)
                )
            raise ReadError(f"{name}@{segment}: no endpoint served its manifest", attempts)
        if placement is not None:
            apply_placement(rel, placement, source)
        elif any(ep.kind != "shardgate" for ep in self.endpoints):
            await self._placement_from_gateways(rel)
        return rel

    async def _placement_from_gateways(self, rel: Release) -> None:
        """The placement from a shardgate gateway that holds one, so IPFS endpoints can be used too."""
        for ep in order(self.endpoints, self.config):
            url = ep.placement_url(rel)
            if url is None:
                continue
            try:
                data = await self._get_small(ep, url, MAX_PLACEMENT)
                apply_placement(rel, data, url)
                rel.placement_bytes = data
                return
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, _Status, ManifestError):
                continue

    async def _read_source(self, source: str) -> bytes:
        if source.startswith(("http://", "https://")):
            session = await self.session()
            try:
                async with session.get(source) as resp:
                    if resp.status != 200:
                        raise _Status(resp.status, "")
                    return await _body(resp, MAX_PLACEMENT)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, _Status) as e:
                raise ReadError(f"placement {source}: {_describe(e)}") from None
        try:
            return await asyncio.to_thread(Path(source).expanduser().read_bytes)
        except OSError as e:
            raise ReadError(f"placement {source}: {e}") from None

    # ----------------------------------------------------------------- chunk tables

    async def table(self, rel: Release, f: FileEntry) -> _native.ChunkTable | None:
        """The file's chunk table, proven against its hash and the file's root (None for one chunk)."""
        if f.chunk_table is None:
            return None
        # Keyed by the file as well: a table proven for one root is never reused for another.
        key = (f.chunk_table, f.blake3, f.size, f.chunk_size)
        hit = self._tables.get(key)
        if hit is not None:
            self._tables.move_to_end(key)
            return hit
        limit = 24 + 32 * f.chunk_count
        attempts: list[tuple[str, str]] = []
        for round_ in range(self.config.attempts):
            for ep in order(self.endpoints, self.config):
                url = ep.table_url(rel, f)
                if url is None:
                    continue
                try:
                    data = await self._get_small(ep, url, limit)
                    table = await self._hash(_native.ChunkTable.open, data, f.chunk_table, f.size, f.chunk_size, f.blake3)
                except ValueError as e:
                    attempts.append((ep.label, f"chunk table: {e}"))
                    ep.failed(self.config.cooldown, at_once=True)
                    continue
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError, _Status) as e:
                    self._fail(ep, e, attempts, f"{rel.label} {f.path}")
                    continue
                ep.succeeded()
                self._tables[key] = table
                while len(self._tables) > 1024:
                    self._tables.popitem(last=False)
                return table
            await asyncio.sleep(backoff(self.config, round_))
        raise ReadError(f"{rel.label} {f.path}: no endpoint served a chunk table that checks out", attempts)

    # ----------------------------------------------------------------- bytes

    async def read(self, rel: Release, f: FileEntry, start: int, end: int, readahead: bool = False) -> bytes:
        """Bytes `start..end` of the file, every one verified; within the configured deadline."""
        start, end = max(0, start), min(end, f.size)
        if start >= end:
            return b""
        if f.encrypted:
            raise EncryptedFileError(
                f"{rel.label} {f.path} is encrypted: its chunk table covers ciphertext and this client holds no "
                "data keys; a cleared tenant reads it decrypted through the gateway, or with `shardgate decrypt`"
            )
        deadline = time.monotonic() + self.config.deadline
        try:
            table = await asyncio.wait_for(self.table(rel, f), self.config.deadline)
        except asyncio.TimeoutError:
            raise DeadlineError(f"{rel.label} {f.path}: no chunk table within {self.config.deadline} s") from None
        first, last = start // f.chunk_size, (end - 1) // f.chunk_size + 1
        futures = self._want(rel, f, table, first, last)
        if readahead:
            self._readahead(rel, f, table, last)
        try:
            chunks = await asyncio.wait_for(
                asyncio.gather(*(asyncio.shield(x) for x in futures)), max(0.0, self._remaining(deadline))
            )
        except asyncio.TimeoutError:
            raise DeadlineError(
                f"{rel.label} {f.path}: bytes {start}..{end} not verified within the {self.config.deadline} s deadline"
            ) from None
        cs = f.chunk_size
        a, b = start - first * cs, end - (last - 1) * cs
        if len(chunks) == 1:
            return chunks[0] if (a, b) == (0, len(chunks[0])) else chunks[0][a:b]
        # One copy: the first and last chunks cut through views.
        views = [memoryview(c) for c in chunks]
        views[0], views[-1] = views[0][a:], views[-1][:b]
        return b"".join(views)

    def _want(self, rel: Release, f: FileEntry, table, first: int, last: int) -> list[asyncio.Future]:
        """A future per chunk `first..last`: cached, joined in flight, or fetched in runs of missing chunks.

        A run has a deadline of its own (from when it starts), so a reader that
        joins it later is not cut short by the reader that started it.
        """
        loop = asyncio.get_running_loop()
        futures, missing, mine = [], [], {}
        for i in range(first, last):
            key = (f.blake3, f.chunk_size, i)
            data = self.cache.get(key)
            if data is not None:
                fut = loop.create_future()
                fut.set_result(data)
            elif key in self._inflight:
                fut = self._inflight[key]
            else:
                fut = loop.create_future()
                fut.add_done_callback(_retrieve)
                self._inflight[key] = fut
                missing.append(i)
                mine[i] = fut
            futures.append(fut)
        per_run = max(1, self.config.span_bytes // f.chunk_size)
        run: list[int] = []
        for i in missing + [-1]:
            if run and (i != run[-1] + 1 or len(run) == per_run):
                lo, hi = run[0], run[-1] + 1
                futs = {j: mine[j] for j in run}
                task = asyncio.ensure_future(
                    self._fetch_run(rel, f, table, lo, hi, futs, time.monotonic() + self.config.deadline)
                )
                self._tasks.add(task)
                # Cancelled before it ran (a closing client): its chunks still get an answer.
                task.add_done_callback(lambda t, f=f, futs=futs: self._finished(t, f, futs))
                run = []
            if i >= 0:
                run.append(i)
        return futures

    def _readahead(self, rel: Release, f: FileEntry, table, after: int) -> None:
        """Keeps up to `readahead_bytes` of chunks past `after` fetched or in flight, topping up by halves."""
        window = self.config.readahead_bytes // f.chunk_size
        if window <= 0:
            return
        stop = min(f.chunk_count, after + window)
        j = after
        while j < stop and ((f.blake3, f.chunk_size, j) in self.cache or (f.blake3, f.chunk_size, j) in self._inflight):
            j += 1
        if j < stop and j - after <= window // 2:
            self._want(rel, f, table, j, stop)

    def _finished(self, task: asyncio.Task, f: FileEntry, futs: dict[int, asyncio.Future]) -> None:
        self._tasks.discard(task)
        if any(not x.done() for x in futs.values()):
            why = "cancelled" if task.cancelled() else _describe(task.exception() or Exception("ended"))
            self._settle(f, futs, ReadError(f"{f.path}: read abandoned ({why})"))

    async def _fetch_run(
        self, rel: Release, f: FileEntry, table, lo: int, hi: int, futs: dict[int, asyncio.Future], deadline: float
    ) -> None:
        """Fetches chunks `lo..hi`, failing over between endpoints; resolves each chunk's future once verified."""
        state = {"next": lo}
        attempts: list[tuple[str, str]] = []
        bad: tuple[int, str, str] | None = None
        try:
            for round_ in range(self.config.attempts):
                for ep in order(self.endpoints, self.config):
                    if state["next"] >= hi or self._remaining(deadline) <= 0:
                        break
                    url = ep.file_url(rel, f)
                    if url is None:
                        continue
                    try:
                        await asyncio.wait_for(
                            self._stream(ep, url, rel, f, table, hi, state), max(0.0, self._remaining(deadline))
                        )
                        ep.succeeded()
                    except _BadChunk as e:
                        bad = bad or (e.index, ep.label, e.why)
                        self._fail(ep, e, attempts)
                    except aiohttp.ServerTimeoutError as e:
                        # A connect timeout, or a stall: no byte for `stall_timeout`.
                        self._fail(ep, asyncio.TimeoutError(f"timed out: {e or 'stalled'}"), attempts)
                    except asyncio.TimeoutError:
                        self._fail(ep, asyncio.TimeoutError("the read's deadline passed mid-response"), attempts)
                    except (aiohttp.ClientError, OSError, _Status, asyncio.IncompleteReadError) as e:
                        self._fail(ep, e, attempts, f"{rel.label} {f.path}")
                if state["next"] >= hi or self._remaining(deadline) <= 0 or round_ + 1 == self.config.attempts:
                    break
                await asyncio.sleep(min(backoff(self.config, round_), max(0.0, self._remaining(deadline))))
            if state["next"] < hi:
                err: Exception
                if bad is not None:
                    index, endpoint, why = bad
                    err = IntegrityError(rel.label, f.path, f.chunk_range(index), index, endpoint, why, attempts)
                elif self._remaining(deadline) <= 0:
                    err = DeadlineError(f"{rel.label} {f.path}: chunks {state['next']}..{hi} not verified in time", attempts)
                else:
                    s, _ = f.chunk_range(state["next"])
                    err = ReadError(f"{rel.label} {f.path}: no endpoint served bytes {s}.. (chunk {state['next']})", attempts)
                self._settle(f, futs, err)
        except TakenDown as e:
            self._settle(f, futs, e)
        except BaseException as e:
            self._settle(f, futs, ReadError(f"{rel.label} {f.path}: read abandoned ({_describe(e)})"))
            raise

    def _settle(self, f: FileEntry, futs: dict[int, asyncio.Future], err: Exception) -> None:
        """Fails this run's chunks that are still unanswered (never another run's)."""
        for i, fut in futs.items():
            key = (f.blake3, f.chunk_size, i)
            if self._inflight.get(key) is fut:
                del self._inflight[key]
            if not fut.done():
                fut.set_exception(err)

    async def _stream(self, ep: Endpoint, url: str, rel: Release, f: FileEntry, table, hi: int, state: dict) -> None:
        """One range request for chunks `state["next"]..hi`; each chunk is verified as it completes."""
        start = f.chunk_range(state["next"])[0]
        stop = f.chunk_range(hi - 1)[1]
        session = await self.session()
        assert self._sem is not None
        headers = dict(ep.headers)
        headers["Range"] = f"bytes={start}-{stop - 1}"
        async with self._sem:
            t0 = time.monotonic()
            async with session.get(url, headers=headers) as resp:
                if resp.status == 206:
                    got = resp.headers.get("Content-Range", "")
                    want = f"bytes {start}-{stop - 1}/"
                    if not got.startswith(want) or got[len(want) :] not in (str(f.size), "*"):
                        raise _Status(206, f"Content-Range {got!r} is not the {want}{f.size} asked for")
                elif resp.status == 200:
                    # Ranges ignored: the whole file follows; skip to the start (not far).
                    if start > MAX_SKIP:
                        raise _Status(200, f"the endpoint ignores Range; not reading {start} bytes to get to the range")
                    skip = start
                    while skip:
                        piece = await resp.content.read(min(skip, 1 << 20))
                        if not piece:
                            raise _Status(200, "the body ended before the range asked for")
                        skip -= len(piece)
                else:
                    raise _Status(resp.status, (await resp.content.read(300)).decode("utf-8", "replace").strip())
                ep.observe(time.monotonic() - t0)
                if table is None:
                    # A single-chunk file: the whole of it, checked against its root.
                    data = await resp.content.readexactly(stop - start)
                    if not await self._hash(lambda: len(data) == f.size and b3hex(data) == f.blake3):
                        raise _BadChunk(state["next"], "BLAKE3 is not the file's")
                    self._store(f, state["next"], data, state)
                    return
                # Batches of whole chunks: batch k is checked on the pool (one call)
                # while batch k + 1 is read from the socket.
                per_batch = max(1, BATCH_BYTES // f.chunk_size)
                pending: tuple[int, list[bytes], asyncio.Future] | None = None
                i = state["next"]
                while i < hi:
                    j = min(hi, i + per_batch)
                    batch: list[bytes] = []
                    try:
                        for k in range(i, j):
                            s, e = f.chunk_range(k)
                            batch.append(await resp.content.readexactly(e - s))
                    except BaseException:
                        # Keep the batch already in hand before giving up on this response.
                        if pending is not None:
                            await self._accept(f, *pending, state)
                        raise
                    check = asyncio.ensure_future(self._hash(table.verify_chunks, i, batch))
                    if pending is not None:
                        await self._accept(f, *pending, state)
                    pending = (i, batch, check)
                    i = j
                if pending is not None:
                    await self._accept(f, *pending, state)

    async def _accept(self, f: FileEntry, lo: int, batch: list[bytes], check: asyncio.Future, state: dict) -> None:
        """Hands out the chunks of a batch that verified; the first that did not is a bad chunk."""
        good = await check
        for k in range(good):
            self._store(f, lo + k, batch[k], state)
        if good < len(batch):
            raise _BadChunk(lo + good, "BLAKE3 does not match the chunk table")

    def _store(self, f: FileEntry, index: int, data: bytes, state: dict) -> None:
        """A verified chunk: into the cache, to its waiters, and the run moves past it."""
        key = (f.blake3, f.chunk_size, index)
        self.cache.put(key, data)
        fut = self._inflight.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(data)
        state["next"] = index + 1


async def _body(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """A whole response body of at most `limit` bytes (more is an error, never a silent cut)."""
    if resp.content_length is not None and resp.content_length > limit:
        raise _Status(resp.status, f"{resp.content_length} bytes is more than the {limit} expected")
    data = bytearray()
    while True:
        more = await resp.content.read(min(1 << 20, limit + 1 - len(data)))
        if not more:
            return bytes(data)
        data += more
        if len(data) > limit:
            raise _Status(resp.status, f"more than the {limit} bytes expected")


_POOL: ThreadPoolExecutor | None = None


def _hash_pool() -> ThreadPoolExecutor:
    """One pool for every client in the process: hashing is CPU-bound, more threads than cores gain nothing."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="shardgate-hash")
    return _POOL


def _forget_pool() -> None:
    # A forked child (a DataLoader worker) inherits the pool without its threads.
    global _POOL
    _POOL = None


os.register_at_fork(after_in_child=_forget_pool)


def _retrieve(fut: asyncio.Future) -> None:
    # A prefetched chunk that failed and that no reader awaited is not an error to log.
    if not fut.cancelled():
        fut.exception()


def _describe(e: BaseException) -> str:
    if isinstance(e, asyncio.TimeoutError):
        return str(e) or "timed out (stalled)"
    if isinstance(e, asyncio.IncompleteReadError):
        return f"the response ended {e.expected - len(e.partial)} bytes short of a chunk"
    if isinstance(e, _BadChunk):
        return f"chunk {e.index}: {e.why}"
    return f"{type(e).__name__}: {e}" if not isinstance(e, _Status) else str(e)
