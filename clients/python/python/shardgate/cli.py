"""`python -m shardgate`: download, verify and stream releases from the command line.

    python -m shardgate get NAME@VERSION [PATH ...] -o DIR
    python -m shardgate verify NAME@VERSION [--json]
    python -m shardgate cat shardgate://NAME@VERSION/PATH > file   (WebDataset: pipe:python -m shardgate cat URL)

Settings: --endpoint (repeat), --trust (repeat), --api-key, --placement, or
SHARDGATE_ENDPOINTS, SHARDGATE_TRUST, SHARDGATE_API_KEY and the config file.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import tempfile
import time

from tqdm import tqdm

from .client import Client
from .config import Config
from .errors import ShardgateError
from .fs import split

STEP = 8 << 20


def _config(a: argparse.Namespace, release: str | None) -> Config:
    opts: dict = {}
    if a.endpoint:
        opts["endpoints"] = a.endpoint
    if a.trust:
        opts["trust"] = a.trust
    if a.api_key:
        opts["api_key"] = a.api_key
    if a.deadline:
        opts["deadline"] = a.deadline
    if a.placement:
        if release is None:
            raise ShardgateError("--placement needs NAME@VERSION")
        opts["placements"] = {release: a.placement}
    return Config.load(opts)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _bar(total: int, desc: str, quiet: bool) -> tqdm:
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, leave=False,
                disable=quiet or not sys.stderr.isatty(), file=sys.stderr)


async def _stream(client: Client, rel, f, sink, bar: tqdm) -> float | None:
    """Reads the file in order (prefetching), handing each verified piece to `sink`; returns time to first byte."""
    at, first, t0 = 0, None, time.monotonic()
    while at < f.size:
        data = await client.read(rel, f, at, min(f.size, at + STEP), readahead=True)
        if first is None:
            first = time.monotonic() - t0
        sink(data)
        at += len(data)
        bar.update(len(data))
    return first


async def _get(a: argparse.Namespace) -> int:
    name, segment, _ = split(a.release + "/")
    client = Client(_config(a, a.release))
    try:
        rel = await client.release(name, segment)
        wanted = a.paths or rel.paths
        missing = [p for p in wanted if p not in rel.files and not rel.under(p)]
        if missing:
            raise ShardgateError(f"{rel.label} has no file or directory {missing[0]!r}")
        files = [rel.files[p] for p in rel.paths if any(p == w or p.startswith(w.rstrip("/") + "/") for w in wanted)]
        total = sum(f.size for f in files)
        with _bar(total, f"get {rel.label}", a.quiet) as bar:
            for f in files:
                dest = os.path.join(a.output, *f.path.split("/"))
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=".shardgate-")
                try:
                    with os.fdopen(fd, "wb") as out:
                        await _stream(client, rel, f, out.write, bar)
                    os.chmod(tmp, 0o666 & ~_umask())
                    os.replace(tmp, dest)
                except BaseException:
                    os.unlink(tmp)
                    raise
        print(f"OK {rel.label} ({rel.id}): {len(files)} files, {total} bytes verified into {a.output}")
        return 0
    finally:
        await client.close()


async def _verify(a: argparse.Namespace) -> int:
    name, segment, _ = split(a.release + "/")
    base = _config(a, a.release)
    report: dict = {"release": f"{name}@{segment}", "release_id": None, "paths": [], "disagreements": []}
    ok = True
    # The release through every endpoint first, for a placement a gateway holds: an IPFS
    # endpoint alone has no other way to learn the CIDs.
    hints: dict[str, bytes] = {}
    everyone = Client(dataclasses.replace(base, attempts=1))
    try:
        known = await everyone.release(name, segment)
        if known.placement_bytes is not None:
            hints[known.label] = known.placement_bytes
        # A tag is resolved once; every path is then read at that version.
        segment = known.version
    except ShardgateError:
        pass
    finally:
        await everyone.close()
    ids: dict[str, str] = {}
    for spec in base.endpoints:
        # Each endpoint alone, as the drill reads each path: no failover hides a bad one.
        client = Client(dataclasses.replace(base, endpoints=(spec,), attempts=1), placement_hints=hints)
        path = {"via": spec.label, "files": 0, "bytes": 0, "seconds": 0.0, "ttfb_ms": [], "failures": []}
        t0 = time.monotonic()
        try:
            rel = await client.release(name, segment)
            ids[spec.label] = rel.id
            report["release_id"] = rel.id
            report["release"] = rel.label
            with _bar(sum(f.size for f in rel.files.values()), f"verify {spec.label}", a.quiet) as bar:
                for p in rel.paths:
                    f = rel.files[p]
                    try:
                        first = await _stream(client, rel, f, lambda d: None, bar)
                        path["files"] += 1
                        path["bytes"] += f.size
                        if first is not None:
                            path["ttfb_ms"].append(first * 1000)
                    except ShardgateError as e:
                        path["failures"].append(f"{p}: {e}")
        except ShardgateError as e:
            path["failures"].append(f"manifest: {e}")
        finally:
            await client.close()
        path["seconds"] = time.monotonic() - t0
        ok &= not path["failures"]
        report["paths"].append(path)
    if len(set(ids.values())) > 1:
        ok = False
        report["disagreements"].append(
            "the paths served different signed releases: " + ", ".join(f"{v} via {k}" for k, v in ids.items())
        )
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        for p in report["paths"]:
            t = sorted(p["ttfb_ms"]) or [0.0]
            pct = lambda q: t[min(len(t) - 1, int(q * len(t)))]  # noqa: E731
            mbps = p["bytes"] / 1e6 / p["seconds"] if p["seconds"] > 0 else 0.0
            print(f"PATH {p['via']}: {p['files']} files, {p['bytes']} bytes in {p['seconds']:.2f} s ({mbps:.1f} MB/s), "
                  f"first byte p50 {pct(0.5):.1f} ms p99 {pct(0.99):.1f} ms, {len(p['failures'])} failures")
            for f in p["failures"]:
                print(f"FAIL {p['via']}: {f}")
        for d in report["disagreements"]:
            print(f"DIFFER {d}")
        if ok:
            print(f"OK {report['release']} ({report['release_id']}): every path served the published bytes")
    if not ok:
        print("verification failed", file=sys.stderr)
    return 0 if ok else 1


async def _cat(a: argparse.Namespace) -> int:
    name, segment, inner = split(a.url)
    client = Client(_config(a, f"{name}@{segment}"))
    out = sys.stdout.buffer
    try:
        rel = await client.release(name, segment)
        f = rel.files.get(inner)
        if f is None:
            raise ShardgateError(f"{rel.label} has no file {inner!r}")
        with _bar(f.size, inner, True) as bar:
            await _stream(client, rel, f, out.write, bar)
        out.flush()
        return 0
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shardgate", description="Read shardgate releases, verifying every byte.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--endpoint", action="append", help="gateway URL, or ipfs+http://HOST:PORT (repeat; in order)")
    common.add_argument("--trust", action="append", help="trusted publisher key: ed25519:... or a .pub file (repeat)")
    common.add_argument("--api-key", default=None, help="bearer key for shardgate gateways")
    common.add_argument("--placement", default=None, help="the release's placement.json (path or URL)")
    common.add_argument("--deadline", type=float, default=None, help="seconds any one read may take")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("get", parents=[common], help="download and verify files of a release")
    g.add_argument("release", metavar="NAME@VERSION")
    g.add_argument("paths", nargs="*", metavar="PATH", help="files or directories (default: all)")
    g.add_argument("-o", "--output", required=True, metavar="DIR")
    v = sub.add_parser("verify", parents=[common], help="stream every file through each endpoint and report")
    v.add_argument("release", metavar="NAME@VERSION")
    v.add_argument("--json", action="store_true")
    c = sub.add_parser("cat", parents=[common], help="write one verified file to stdout")
    c.add_argument("url", metavar="shardgate://NAME@VERSION/PATH")
    a = p.parse_args(argv)
    try:
        return asyncio.run({"get": _get, "verify": _verify, "cat": _cat}[a.cmd](a))
    except ShardgateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if not isinstance(e, OSError) else 1
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
