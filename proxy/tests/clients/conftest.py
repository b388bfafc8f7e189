"""Shared fixtures for tests that drive shardgate with real Python clients."""
import contextlib
import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHUNK_SIZE = 256 * 1024
MIB = 1024 * 1024
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 20
CMD_TIMEOUT_S = 120
REPO_ROOT = Path(__file__).resolve().parents[3]
# The `shardgate serve` processes running now, by base URL (a test may stop one itself).
SERVING: dict = {}


@pytest.fixture(scope="session")
def shardgate_bin() -> str:
    path = os.environ.get("SHARDGATE_BIN")
    if not path or not Path(path).exists():
        pytest.fail("SHARDGATE_BIN is not set to a built shardgate binary; run conf/test.sh")
    return path


def run(bin_path: str, *args: str, cwd: Path) -> str:
    out = subprocess.run([bin_path, *args], cwd=cwd, capture_output=True, text=True,
                         timeout=CMD_TIMEOUT_S)
    assert out.returncode == 0, f"shardgate {args}: {out.stderr}"
    return out.stdout


def b3sum(path: Path) -> str:
    """BLAKE3 of a file by the reference `b3sum` CLI."""
    out = subprocess.run(["b3sum", "--no-names", str(path)], capture_output=True, text=True,
                         timeout=CMD_TIMEOUT_S, check=True)
    return out.stdout.strip()



@dataclass
class CurlResponse:
    status: int
    headers: dict  # lower-cased names of the final response
    body: bytes


def curl(url: str, *args: str, tmp: Path) -> CurlResponse:
    """One request by the real `curl` CLI; headers and body are taken from files it writes."""
    hdr, body = tmp / "curl.headers", tmp / "curl.body"
    for p in (hdr, body):
        p.unlink(missing_ok=True)
    out = subprocess.run(["curl", "-sS", "--max-time", "60", "-D", str(hdr), "-o", str(body),
                          "-w", "%{http_code}", *args, url],
                         capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    assert out.returncode == 0, f"curl {args} {url}: exit {out.returncode}: {out.stderr}"
    blocks = [b for b in hdr.read_bytes().decode("latin-1").split("\r\n\r\n") if b.strip()]
    status_line, *header_lines = blocks[-1].split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    assert int(status_line.split()[1]) == int(out.stdout)
    return CurlResponse(int(out.stdout), headers, body.read_bytes() if body.exists() else b"")


# --------------------------------------------------------------------------- releases


@dataclass
class Release:
    """A packed release: its manifest and the source bytes of every file by path."""
    name: str
    version: str
    dir: Path  # the release directory written by `shardgate pack`
    src: Path  # the directory that was packed
    manifest: dict = field(repr=False)
    sources: dict = field(default_factory=dict, repr=False)

    def entry(self, path: str) -> dict:
        matches = [f for f in self.manifest["files"] if f["path"] == path]
        assert len(matches) == 1, f"{path} not in manifest of {self.name}"
        return matches[0]


@dataclass
class Gateway:
    """A running `shardgate serve` with both test releases."""
    kind: str  # "dir", "btfs-api" or "fleet" (three dir gateways behind HAProxy)
    base: str  # http://127.0.0.1:PORT
    data: Release  # plain files: binaries, JSONL, parquet
    wds: Release  # webdataset shards
    # "NAME@VERSION" -> placement.json of the release as published to the dev node (btfs-api only).
    placements: dict = field(default_factory=dict)

    def url(self, release: Release, path: str) -> str:
        return f"{self.base}/v1/datasets/{release.name}/{release.version}/files/{path}"

    def data_url(self, path: str) -> str:
        return self.url(self.data, path)


def _write_parquet(path: Path, rng: random.Random) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 60_000
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    table = pa.table({
        "id": pa.array(range(rows), type=pa.int64()),
        "x": pa.array([rng.random() for _ in range(rows)], type=pa.float64()),
        "y": pa.array([rng.uniform(-1, 1) for _ in range(rows)], type=pa.float32()),
        "label": pa.array([f"{rng.choice(words)}-{rng.randrange(10**6):06d}" for _ in range(rows)]),
        "flag": pa.array([rng.random() < 0.5 for _ in range(rows)]),
    })
    pq.write_table(table, path, row_group_size=10_000, compression="NONE")


def _make_data_source(src: Path) -> None:
    rng = random.Random(20261124)
    (src / "blobs").mkdir(parents=True)
    (src / "empty.bin").write_bytes(b"")
    (src / "one.bin").write_bytes(b"\x5a")
    (src / "blobs" / "mid.bin").write_bytes(rng.randbytes(300_000))
    (src / "blobs" / "big.bin").write_bytes(rng.randbytes(3 * MIB))
    with open(src / "records.jsonl", "w") as f:
        for i in range(3000):
            f.write(json.dumps({"id": i, "text": f"record {i}", "v": rng.random()}) + "\n")
    _write_parquet(src / "table.parquet", rng)
    size = (src / "table.parquet").stat().st_size
    assert 1.5 * MIB < size < 3 * MIB, f"parquet is {size} bytes, expected ~2 MiB"


def _make_wds_source(src: Path) -> None:
    rng = random.Random(7)
    (src / "train").mkdir(parents=True)
    for i in range(200):
        (src / "train" / f"{i:05d}.jpg").write_bytes(b"\xff\xd8\xff" + rng.randbytes(5000 + 97 * i))
        (src / "train" / f"{i:05d}.cls").write_text(str(i % 10))


def _pack(bin_path: str, root: Path, src_name: str, name: str, *extra: str) -> Release:
    out = f"{src_name}-out"
    run(bin_path, "pack", src_name, "--name", name, "--version", "1.0.0", "--key", "key",
        "--out", out, "--chunk-size", "256KiB", *extra, cwd=root)
    manifest = json.loads((root / out / "manifest.json").read_text())
    sources = {f["path"]: (root / out / "files" / f["path"]).read_bytes() for f in manifest["files"]}
    return Release(name=name, version="1.0.0", dir=root / out, src=root / src_name,
                   manifest=manifest, sources=sources)


@pytest.fixture(scope="session")
def releases(tmp_path_factory, shardgate_bin: str) -> dict:
    """Packs two signed releases from generated data: `data` (plain files) and `wds`."""
    root = tmp_path_factory.mktemp("releases")
    pubkey = run(shardgate_bin, "keygen", "--out", "key", cwd=root).strip().splitlines()[0]
    assert pubkey.startswith("ed25519:")
    _make_data_source(root / "data")
    _make_wds_source(root / "wds")
    data = _pack(shardgate_bin, root, "data", "clients")
    wds = _pack(shardgate_bin, root, "wds", "clientswds", "--format", "webdataset",
                "--shard-size", "1MiB")
    # Plain files are packed as they are: the served bytes must be the source bytes.
    for path, blob in data.sources.items():
        assert (root / "data" / path).read_bytes() == blob, path
    return {"root": root, "key_pub": root / "key.pub", "data": data, "wds": wds}


# --------------------------------------------------------------------------- gateway process


def _config(path: Path, key_pub: Path, manifests: list, origins: list, extra: tuple = ()) -> Path:
    """A gateway config serving `manifests` from `origins`; `extra` lines (TOML) are appended."""
    lines = ['[server]', 'listen = "127.0.0.1:0"', '[trust]', f'keys = ["{key_pub}"]']
    for m in manifests:
        lines += ['[[releases]]', f'manifest = "{m}"']
    for o in origins:
        lines.append('[[origins]]')
        lines += [f'{k} = "{v}"' for k, v in o.items()]
    lines += ['[hot_tier]', 'capacity = "64MiB"', *extra]
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def serve(bin_path: str, config: Path):
    """Runs `shardgate serve`, yields its base URL once /readyz answers, SIGTERMs it after."""
    with serve_with_usage(bin_path, config) as (base, _):
        yield base


@contextlib.contextmanager
def serve_with_usage(bin_path: str, config: Path, usage_api: bool = False):
    """Like `serve`, yielding (base URL, usage API host:port or None)."""
    with serve_listeners(bin_path, config, usage_api=usage_api) as (base, usage, _):
        yield base, usage


def wait_ready(base: str, proc, deadline: float) -> bool:
    """Polls `base`/readyz until it answers 200 (True), or `proc` exits or `deadline` passes (False)."""
    import requests

    while True:
        try:
            if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                return True
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.1)


@contextlib.contextmanager
def serve_listeners(bin_path: str, config: Path, usage_api: bool = False, s3_api: bool = False):
    """Like `serve`, yielding (base URL, usage API host:port or None, S3 listener URL or None)."""
    log = config.with_suffix(".stderr.log")
    with open(log, "wb") as err:
        proc = subprocess.Popen([bin_path, "serve", "--config", str(config)], cwd=config.parent,
                                stdout=subprocess.PIPE, stderr=err, text=True)
    lines: queue.Queue = queue.Queue()
    # Reads stdout to its end so the server never blocks on a full pipe.
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()

    def fail(msg: str):
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)
        pytest.fail(f"{msg}; stderr tail:\n{log.read_text()[-3000:]}")

    deadline = time.monotonic() + START_TIMEOUT_S

    def printed(pattern: str, what: str) -> str:
        """The first group of the next stdout line matching `pattern`."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or proc.poll() is not None:
                fail(f"shardgate serve did not print its {what}")
            try:
                line = lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            m = re.search(pattern, line)
            if m:
                return m.group(1)

    base = printed(r"shardgate listening on (http://127\.0\.0\.1:\d+)", f"URL within {START_TIMEOUT_S}s")
    usage = printed(r"usage API listening on https?://(127\.0\.0\.1:\d+)", "usage API address") if usage_api else None
    s3 = printed(r"S3 API listening on (http://127\.0\.0\.1:\d+)", "S3 listener address") if s3_api else None

    if not wait_ready(base, proc, deadline):
        fail(f"{base}/readyz did not answer 200 within {START_TIMEOUT_S}s")

    SERVING[base] = proc
    try:
        yield base, usage, s3
    finally:
        SERVING.pop(base, None)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)
            pytest.fail(f"shardgate serve did not exit within {STOP_TIMEOUT_S}s of SIGTERM")
        assert code == 0, f"shardgate serve exited {code} after SIGTERM:\n{log.read_text()[-3000:]}"


@pytest.fixture(scope="session")
def dir_gateway(releases, shardgate_bin: str):
    """Both releases served from their local release directories (dir origins)."""
    data, wds = releases["data"], releases["wds"]
    config = _config(releases["root"] / "dir-gateway.toml", releases["key_pub"],
                     [data.dir / "manifest.json", wds.dir / "manifest.json"],
                     [{"kind": "dir", "path": data.dir}, {"kind": "dir", "path": wds.dir}])
    with serve(shardgate_bin, config) as base:
        yield Gateway(kind="dir", base=base, data=data, wds=wds)


@pytest.fixture(scope="session")
def node_gateway(releases, shardgate_bin: str, tmp_path_factory):
    """Both releases published to the dev node and served through a btfs-api origin only.

    The gateway's copy of each release keeps manifest.json and placement.json and
    nothing else, so every byte it serves has to come from the node."""
    api = os.environ.get("DEV_NODE_API")
    prefix = os.environ.get("DEV_NODE_API_PREFIX", "/api/v0")
    if not api:
        pytest.fail("DEV_NODE_API is not set: start a dev node (bash conf/dev-node/start.sh DIR; "
                    "set -a; . DIR/env; set +a) or run conf/test.sh")
    root = tmp_path_factory.mktemp("node")
    manifests, placements = [], {}
    for rel in (releases["data"], releases["wds"]):
        dst = root / rel.dir.name
        shutil.copytree(rel.dir, dst)
        cid = run(shardgate_bin, "publish", str(dst), "--node", api, "--api-prefix", prefix,
                  cwd=root).strip().splitlines()[-1].strip()
        placement = json.loads((dst / "placement.json").read_text())
        assert placement["manifest_cid"] == cid
        assert {f["blake3"] for f in rel.manifest["files"]} <= set(placement["blobs"])
        placements[f"{rel.name}@{rel.version}"] = dst / "placement.json"
        shutil.rmtree(dst / "files")
        shutil.rmtree(dst / "tables", ignore_errors=True)
        manifests.append(dst / "manifest.json")
    config = _config(root / "node-gateway.toml", releases["key_pub"], manifests,
                     [{"kind": "btfs-api", "url": api, "api_prefix": prefix}])
    with serve(shardgate_bin, config) as base:
        yield Gateway(kind="btfs-api", base=base, data=releases["data"], wds=releases["wds"], placements=placements)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def haproxy(members: list, log: Path):
    """HAProxy with the shipped conf/fleet/haproxy.cfg in front of three gateways (base URLs);
    yields the balancer's base URL once it answers /readyz."""
    if not shutil.which("haproxy"):
        pytest.fail("haproxy is not installed (conf/test.sh installs the Debian package)")
    assert len(members) == 3, "conf/fleet/haproxy.cfg lists three members"
    port = free_port()
    env = {**os.environ, "SHARDGATE_LB_BIND": f"127.0.0.1:{port}"}
    for i, m in enumerate(members, 1):
        env[f"SHARDGATE_MEMBER{i}"] = m.removeprefix("http://")
    with open(log, "wb") as out:
        proc = subprocess.Popen(["haproxy", "-db", "-f", str(REPO_ROOT / "conf/fleet/haproxy.cfg")], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_ready(base, proc, time.monotonic() + START_TIMEOUT_S):
            pytest.fail(f"haproxy did not come up:\n{log.read_text()[-3000:]}")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture(scope="session")
def fleet_gateway(releases, shardgate_bin: str):
    """Both releases on three gateways (dir origins, a hot tier each) behind HAProxy with the
    shipped configuration: consistent hashing on the path, health checks on /readyz."""
    data, wds = releases["data"], releases["wds"]
    with contextlib.ExitStack() as stack:
        bases = []
        for i in range(3):
            config = _config(releases["root"] / f"fleet-{i}.toml", releases["key_pub"],
                             [data.dir / "manifest.json", wds.dir / "manifest.json"],
                             [{"kind": "dir", "path": data.dir}, {"kind": "dir", "path": wds.dir}])
            bases.append(stack.enter_context(serve(shardgate_bin, config)))
        lb = stack.enter_context(haproxy(bases, releases["root"] / "fleet-haproxy.log"))
        yield Gateway(kind="fleet", base=lb, data=data, wds=wds)


@pytest.fixture(scope="session", params=["dir", "btfs-api", "fleet"])
def gateway(request) -> Gateway:
    """The same releases behind a dir origin, behind the real dev node, and on a fleet of three
    gateways behind HAProxy."""
    name = {"dir": "dir_gateway", "btfs-api": "node_gateway", "fleet": "fleet_gateway"}[request.param]
    return request.getfixturevalue(name)


@pytest.fixture(scope="session")
def fs():
    """fsspec's HTTP filesystem (aiohttp), shared by the fsspec and pyarrow tests."""
    from fsspec.implementations.http import HTTPFileSystem

    return HTTPFileSystem(skip_instance_cache=True)
