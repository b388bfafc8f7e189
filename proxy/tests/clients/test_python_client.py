"""The Python client (clients/python): `shardgate://` through fsspec and the
loaders that use it, every byte verified by the client itself, against the
real gateway binary and the dev node's own IPFS gateway."""
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import fsspec
import pytest

from conftest import CMD_TIMEOUT_S, MIB, _config, serve

shardgate = pytest.importorskip("shardgate", reason="pip install ./clients/python (conf/test.sh does)")
from shardgate import DeadlineError, IntegrityError, ManifestError, NotFound, ReadError  # noqa: E402

DATA = "clients@1.0.0"
WDS = "clientswds@1.0.0"


def opts(releases, *endpoints, **extra) -> dict:
    """storage_options for `shardgate://`: these endpoints, the test publisher key, a fresh instance."""
    return {"endpoints": list(endpoints), "trust": [str(releases["key_pub"])], "skip_instance_cache": True, **extra}


def sg_fs(releases, *endpoints, **extra):
    return fsspec.filesystem("shardgate", **opts(releases, *endpoints, **extra))


def ipfs_endpoint() -> str:
    gw = os.environ.get("DEV_NODE_GATEWAY")
    if not gw:
        pytest.fail("DEV_NODE_GATEWAY is not set: start a dev node (conf/dev-node/start.sh) or run conf/test.sh")
    return f"ipfs+{gw}"


# --------------------------------------------------------------------------- happy path


def test_every_file_reads_exact_through_fsspec(gateway, releases):
    """fsspec.open and cat_file on every file of both releases, from the dir origin and the dev node."""
    fs = sg_fs(releases, gateway.base)
    for rel, label in ((gateway.data, DATA), (gateway.wds, WDS)):
        for path, src in rel.sources.items():
            with fsspec.open(f"shardgate://{label}/{path}", "rb", **opts(releases, gateway.base)) as f:
                assert f.read() == src, path
            assert fs.cat_file(f"shardgate://{label}/{path}") == src, path
            info = fs.info(f"shardgate://{label}/{path}")
            assert (info["size"], info["type"], info["blake3"]) == (len(src), "file", rel.entry(path)["blake3"])
    assert sorted(fs.ls(f"shardgate://{DATA}", detail=False)) == sorted(
        [f"{DATA}/blobs", f"{DATA}/empty.bin", f"{DATA}/one.bin", f"{DATA}/records.jsonl", f"{DATA}/table.parquet"]
    )
    assert sorted(fs.glob(f"shardgate://{DATA}/blobs/*.bin")) == [f"{DATA}/blobs/big.bin", f"{DATA}/blobs/mid.bin"]
    with pytest.raises(FileNotFoundError):
        fs.info(f"shardgate://{DATA}/no-such-file")
    with pytest.raises(FileNotFoundError):
        fs.cat_file("shardgate://no-such-dataset@1.0.0/x")


def test_pyarrow_pandas_and_polars(dir_gateway, releases):
    import pandas as pd
    import polars as pl
    import pyarrow.parquet as pq

    src = releases["data"].src
    want = pq.read_table(src / "table.parquet")
    o = opts(releases, dir_gateway.base)
    fs = sg_fs(releases, dir_gateway.base)
    assert pq.read_table(f"{DATA}/table.parquet", filesystem=fs).equals(want)
    # Column and row-group reads are ranged reads: only the pages asked for are fetched.
    pf = pq.ParquetFile(fs.open(f"{DATA}/table.parquet"))
    assert pf.read_row_group(3, columns=["label"]).equals(want.slice(30_000, 10_000).select(["label"]))
    df = pd.read_parquet(f"shardgate://{DATA}/table.parquet", storage_options=o)
    assert df.equals(want.to_pandas())
    lines = pd.read_json(f"shardgate://{DATA}/records.jsonl", lines=True, storage_options=o)
    assert lines.equals(pd.read_json(src / "records.jsonl", lines=True))
    with fsspec.open(f"shardgate://{DATA}/table.parquet", **o) as f:
        assert pl.read_parquet(f).equals(pl.read_parquet(src / "table.parquet"))
    assert pl.read_ndjson(fs.open(f"{DATA}/records.jsonl")).equals(pl.read_ndjson(src / "records.jsonl"))


def test_huggingface_datasets_plain_and_streaming(dir_gateway, releases, tmp_path):
    datasets = pytest.importorskip("datasets")
    import pyarrow.parquet as pq

    src = releases["data"].src
    o = opts(releases, dir_gateway.base)
    want = pq.read_table(src / "table.parquet").to_pylist()
    ds = datasets.load_dataset("parquet", data_files=f"shardgate://{DATA}/table.parquet", storage_options=o,
                               split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.to_list() == want
    streamed = datasets.load_dataset("parquet", data_files=f"shardgate://{DATA}/table.parquet", storage_options=o,
                                     split="train", streaming=True)
    assert list(streamed) == want
    records = [json.loads(x) for x in (src / "records.jsonl").read_text().splitlines()]
    js = datasets.load_dataset("json", data_files=f"shardgate://{DATA}/records.jsonl", storage_options=o,
                               split="train", cache_dir=str(tmp_path / "hf"))
    assert js.to_list() == records
    js_stream = datasets.load_dataset("json", data_files=f"shardgate://{DATA}/records.jsonl", storage_options=o,
                                      split="train", streaming=True)
    assert list(js_stream) == records
    shards = sorted(p for p in releases["wds"].sources if p.endswith(".tar"))
    urls = [f"shardgate://{WDS}/{p}" for p in shards]
    wd = datasets.load_dataset("webdataset", data_files={"train": urls}, storage_options=o, split="train",
                               streaming=True).decode(False)
    got = {row["__key__"].rsplit("/", 1)[-1]: (row["jpg"]["bytes"], row["cls"]) for row in wd}
    wsrc = releases["wds"].src / "train"
    assert got == {f"{i:05d}": ((wsrc / f"{i:05d}.jpg").read_bytes(), i % 10) for i in range(200)}


def _wds_samples(urls, handler=None):
    import webdataset as wds

    kw = {"shardshuffle": False}
    if handler is not None:
        kw["handler"] = handler
    return {s["__key__"].rsplit("/", 1)[-1]: (s["jpg"], s["cls"]) for s in wds.WebDataset(urls, **kw)}


def test_webdataset_through_fsspec_urls_and_a_pipe_line(dir_gateway, releases, tmp_path):
    shardgate.register_webdataset()
    shards = sorted(p for p in releases["wds"].sources if p.endswith(".tar"))
    wsrc = releases["wds"].src / "train"
    want = {f"{i:05d}": ((wsrc / f"{i:05d}.jpg").read_bytes(), (wsrc / f"{i:05d}.cls").read_bytes())
            for i in range(200)}
    env_before = dict(os.environ)
    os.environ.update({"SHARDGATE_ENDPOINTS": dir_gateway.base, "SHARDGATE_TRUST": str(releases["key_pub"])})
    try:
        assert _wds_samples([f"shardgate://{WDS}/{p}" for p in shards]) == want
        pipes = [f"pipe:{sys.executable} -m shardgate cat -q shardgate://{WDS}/{p}" for p in shards]
        assert _wds_samples(pipes) == want
    finally:
        os.environ.clear()
        os.environ.update(env_before)


# --------------------------------------------------------------------------- trust


def test_a_manifest_signed_by_an_untrusted_key_is_refused(dir_gateway, releases, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run([os.environ.get("SHARDGATE_BIN", "shardgate"), "keygen", "--out", "k"], cwd=other, check=True,
                   capture_output=True, timeout=CMD_TIMEOUT_S)
    fs = fsspec.filesystem("shardgate", endpoints=[dir_gateway.base], trust=[str(other / "k.pub")],
                           skip_instance_cache=True)
    with pytest.raises(ManifestError, match="not a trusted key"):
        fs.cat_file(f"shardgate://{DATA}/one.bin")
    # The name and version asked for are checked against the signed manifest too.
    with pytest.raises(NotFound):
        sg_fs(releases, dir_gateway.base).cat_file(f"shardgate://{DATA[:-1]}9/one.bin")


# --------------------------------------------------------------------------- a lying gateway

BAD_OFFSET = 4 * 256 * 1024 + 12345  # in chunk 4 of blobs/big.bin


@pytest.fixture(scope="module")
def lying_gateway(releases, shardgate_bin, tmp_path_factory):
    """A gateway with verification off, over a copy of the release with one byte flipped in big.bin."""
    import shutil

    root = tmp_path_factory.mktemp("liar")
    copy = root / "data-out"
    shutil.copytree(releases["data"].dir, copy)
    big = copy / "files" / "blobs" / "big.bin"
    blob = bytearray(big.read_bytes())
    blob[BAD_OFFSET] ^= 0x01
    big.write_bytes(bytes(blob))
    config = _config(root / "liar.toml", releases["key_pub"], [copy / "manifest.json"],
                     [{"kind": "dir", "path": copy}], extra=("[fetch]", "verify = false"))
    with serve(shardgate_bin, config) as base:
        yield base


def test_a_lying_gateway_alone_names_the_chunk_and_returns_no_wrong_byte(lying_gateway, releases):
    src = releases["data"].sources["blobs/big.bin"]
    fs = sg_fs(releases, lying_gateway, attempts=1)
    url = f"shardgate://{DATA}/blobs/big.bin"
    # Chunks 0..3 are intact and read back exact.
    assert fs.cat_file(url, 0, 4 * 256 * 1024) == src[: 4 * 256 * 1024]
    for start, end in ((BAD_OFFSET, BAD_OFFSET + 1), (0, None), (4 * 256 * 1024 - 10, 4 * 256 * 1024 + 10)):
        with pytest.raises(IntegrityError) as e:
            fs.cat_file(url, start, end)
        err = e.value
        assert (err.release, err.path, err.chunk, err.endpoint) == (DATA, "blobs/big.bin", 4, lying_gateway)
        assert err.byte_range == (4 * 256 * 1024, 5 * 256 * 1024)
        for text in (DATA, "blobs/big.bin", "bytes 1048576..1310720", "chunk 4", lying_gateway):
            assert text in str(err)
    with fsspec.open(url, "rb", **opts(releases, lying_gateway, attempts=1)) as f:
        assert f.read(1000) == src[:1000]
        f.seek(BAD_OFFSET - 5)
        with pytest.raises(IntegrityError):
            f.read(10)
    # Files the liar serves intact are read as usual.
    assert fs.cat_file(f"shardgate://{DATA}/blobs/mid.bin") == releases["data"].sources["blobs/mid.bin"]


def test_a_lying_gateway_before_an_honest_one_is_passed_over(lying_gateway, dir_gateway, releases):
    fs = sg_fs(releases, lying_gateway, dir_gateway.base)
    for path, src in releases["data"].sources.items():
        assert fs.cat_file(f"shardgate://{DATA}/{path}") == src, path
        with fs.open(f"{DATA}/{path}") as f:
            assert f.read() == src
    liar = fs.client.endpoints[0]
    assert liar.label == lying_gateway and liar.ejections >= 1, "the liar was not set aside"


# --------------------------------------------------------------------------- no shardgate at all


def test_the_nodes_own_ipfs_gateway_serves_a_whole_release(node_gateway, releases, tmp_path):
    placement = str(node_gateway.placements[DATA])
    fs = sg_fs(releases, ipfs_endpoint(), placements={DATA: placement})
    for path, src in releases["data"].sources.items():
        assert fs.cat_file(f"shardgate://{DATA}/{path}") == src, path
    # The CLI: verify reports as the drill does; get writes verified files.
    env = {**os.environ, "SHARDGATE_TRUST": str(releases["key_pub"])}
    cli = [sys.executable, "-m", "shardgate"]
    out = subprocess.run([*cli, "verify", DATA, "--endpoint", ipfs_endpoint(), "--placement", placement],
                         capture_output=True, text=True, env=env, timeout=CMD_TIMEOUT_S)
    assert out.returncode == 0, out.stderr + out.stdout
    files = len(releases["data"].sources)
    assert f"PATH {ipfs_endpoint().removeprefix('ipfs+')}/ipfs: {files} files" in out.stdout.replace("ipfs:", "", 1)
    assert out.stdout.strip().endswith("every path served the published bytes")
    got = subprocess.run([*cli, "get", DATA, "blobs", "-o", str(tmp_path / "out"), "--endpoint", ipfs_endpoint(),
                          "--placement", placement], capture_output=True, text=True, env=env, timeout=CMD_TIMEOUT_S)
    assert got.returncode == 0, got.stderr
    for path in ("blobs/big.bin", "blobs/mid.bin"):
        assert (tmp_path / "out" / path).read_bytes() == releases["data"].sources[path]
    assert not (tmp_path / "out" / "one.bin").exists()


def test_placement_comes_from_a_gateway_and_reads_survive_its_death(node_gateway, releases, shardgate_bin):
    """A gateway that holds the placement hands it out; when it dies, the IPFS gateway carries on."""
    config = Path(node_gateway.placements[DATA]).parent.parent / "node-gateway.toml"
    with serve(shardgate_bin, config) as base:
        fs = sg_fs(releases, base, ipfs_endpoint(), stall_timeout=2, deadline=30)
        assert fs.cat_file(f"shardgate://{DATA}/one.bin") == releases["data"].sources["one.bin"]
    # The gateway is gone (SIGTERM above); the release and its CIDs are known.
    t0 = time.monotonic()
    for path, src in releases["data"].sources.items():
        assert fs.cat_file(f"shardgate://{DATA}/{path}") == src, path
    assert time.monotonic() - t0 < 25


class FlipProxy:
    """An HTTP proxy in front of a gateway that flips one bit at file offset `at` of what passes through."""

    def __init__(self, upstream: str, at: int):
        import http.server
        import urllib.request

        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                req = urllib.request.Request(upstream + self.path, headers={
                    k: v for k, v in self.headers.items() if k.lower() in ("range", "accept-encoding")})
                try:
                    resp = urllib.request.urlopen(req, timeout=30)
                except urllib.error.HTTPError as e:
                    resp = e
                body = bytearray(resp.read())
                start = 0
                cr = resp.headers.get("Content-Range")
                if cr:
                    start = int(cr.split()[1].split("-")[0])
                if start <= proxy.at < start + len(body):
                    body[proxy.at - start] ^= 0x80
                    proxy.flipped += 1
                self.send_response(resp.status)
                for k in ("Content-Range", "Content-Type"):
                    if resp.headers.get(k):
                        self.send_header(k, resp.headers[k])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(bytes(body))

        self.at, self.flipped = at, 0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_byte_flipping_proxy_in_front_of_the_ipfs_gateway_is_caught(node_gateway, releases):
    placement = str(node_gateway.placements[DATA])
    gw = os.environ["DEV_NODE_GATEWAY"]
    proxy = FlipProxy(gw, BAD_OFFSET)
    try:
        alone = sg_fs(releases, f"ipfs+{proxy.url}", placements={DATA: placement}, attempts=1)
        with pytest.raises(IntegrityError) as e:
            alone.cat_file(f"shardgate://{DATA}/blobs/big.bin")
        assert e.value.chunk == 4 and e.value.endpoint == f"ipfs:{proxy.url}/ipfs"
        assert proxy.flipped >= 1
        # Small files the proxy passes intact are fine; with the node's own gateway next, all is exact.
        both = sg_fs(releases, f"ipfs+{proxy.url}", ipfs_endpoint(), placements={DATA: placement})
        for path, src in releases["data"].sources.items():
            assert both.cat_file(f"shardgate://{DATA}/{path}") == src, path
    finally:
        proxy.close()


# --------------------------------------------------------------------------- dead and stalling endpoints


class Staller:
    """Accepts connections and then stalls: `silent` never answers; `midbody` sends a 206 head and a few bytes."""

    def __init__(self, mode: str):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        self.mode = mode
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            if self.mode == "midbody":
                head = c.recv(65536).decode("latin-1")
                rng = next((line.split("=", 1)[1] for line in head.split("\r\n") if line.lower().startswith("range:")),
                           "0-1023")
                a, b = (int(x) for x in rng.strip().split("-"))
                c.sendall(f"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/*\r\n"
                          f"Content-Length: {b - a + 1}\r\n\r\n".encode() + b"\0" * 100)

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


def dead_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def test_dead_and_stalling_endpoints_are_failed_over_within_the_deadline(dir_gateway, releases):
    silent, midbody = Staller("silent"), Staller("midbody")
    try:
        fs = sg_fs(releases, silent.url, dead_url(), midbody.url, dir_gateway.base, stall_timeout=1, deadline=20,
                   connect_timeout=2)
        t0 = time.monotonic()
        for path, src in releases["data"].sources.items():
            assert fs.cat_file(f"shardgate://{DATA}/{path}") == src, path
        took = time.monotonic() - t0
        assert took < 15, f"failover took {took:.1f} s"
        sick = [e.label for e in fs.client.endpoints if e.ejections]
        assert silent.url in sick and midbody.url in sick
    finally:
        silent.close()
        midbody.close()


def test_a_read_never_hangs_past_its_deadline(releases):
    silent = Staller("silent")
    try:
        fs = sg_fs(releases, silent.url, stall_timeout=30, deadline=2)
        t0 = time.monotonic()
        with pytest.raises(DeadlineError):
            fs.cat_file(f"shardgate://{DATA}/one.bin")
        assert time.monotonic() - t0 < 5
        # Every endpoint dead: a clear error naming each, well inside the deadline.
        fs = sg_fs(releases, dead_url(), dead_url(), deadline=10, backoff=0.05)
        with pytest.raises(ReadError) as e:
            fs.cat_file(f"shardgate://{DATA}/one.bin")
        assert len(e.value.attempts) >= 2
    finally:
        silent.close()


# --------------------------------------------------------------------------- property: exact bytes for any range

PROP_SIZES = [0, 1, 4095, 4096, 4097, 8192, 12289, 40_000, 100_003]


@pytest.fixture(scope="module")
def prop_release(shardgate_bin, releases, tmp_path_factory):
    import random

    from conftest import run

    root = tmp_path_factory.mktemp("prop")
    rng = random.Random(99)
    (root / "src").mkdir()
    sources = {}
    for i, size in enumerate(PROP_SIZES):
        data = rng.randbytes(size)
        (root / "src" / f"f{i}.bin").write_bytes(data)
        sources[f"f{i}.bin"] = data
    shutil_copy = __import__("shutil").copy
    shutil_copy(releases["root"] / "key", root / "key")
    run(shardgate_bin, "pack", "src", "--name", "props", "--version", "1.0.0", "--key", "key", "--out", "out",
        "--chunk-size", "4KiB", cwd=root)
    config = _config(root / "prop.toml", releases["key_pub"], [root / "out" / "manifest.json"],
                     [{"kind": "dir", "path": root / "out"}])
    with serve(shardgate_bin, config) as base:
        yield base, sources


def test_random_ranges_of_random_files_are_exact(prop_release, releases):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    base, sources = prop_release
    # A cache smaller than one file and a short read-ahead: eviction and refetch are exercised too.
    fs = sg_fs(releases, base, cache_bytes=3 * 4096, readahead_bytes=2 * 4096, span_bytes=3 * 4096)
    bound = st.one_of(st.none(), st.integers(-110_000, 110_000))

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(sorted(sources)), bound, bound, st.lists(st.integers(0, 20_000), max_size=4))
    def check(name, start, end, reads):
        src = sources[name]
        got = fs.cat_file(f"shardgate://props@1.0.0/{name}", start, end)
        s = 0 if start is None else (max(0, len(src) + start) if start < 0 else start)
        e = len(src) if end is None else (max(0, len(src) + end) if end < 0 else end)
        assert got == src[s:e]
        with fs.open(f"props@1.0.0/{name}") as f:
            f.seek(min(s, len(src)))
            at = f.tell()
            for n in reads:
                assert f.read(n) == src[at : at + n]
                at = min(len(src), at + n)

    check()


# --------------------------------------------------------------------------- review follow-ups


def test_a_forked_worker_reads_with_the_parents_filesystem(dir_gateway, releases):
    """DataLoader workers are forked after the parent has read: the hash pool must not be inherited dead."""
    import multiprocessing as mp

    fs = sg_fs(releases, dir_gateway.base, deadline=20)
    src = releases["data"].sources["blobs/big.bin"]
    assert fs.cat_file(f"shardgate://{DATA}/blobs/big.bin", 0, 10) == src[:10]
    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:
        got = pool.starmap(_child_read, [(opts(releases, dir_gateway.base, deadline=20), "blobs/big.bin")] * 2,
                           chunksize=1)
    assert got == [src, src]


def _child_read(o: dict, path: str) -> bytes:
    return fsspec.filesystem("shardgate", **o).cat_file(f"shardgate://{DATA}/{path}")


def test_a_placement_given_by_url_and_verify_through_each_path(node_gateway, releases):
    """The placement read whole over HTTP (from a gateway's /placement); `verify` learns it itself."""
    url = f"{node_gateway.base}/v1/datasets/clients/1.0.0/placement"
    fs = sg_fs(releases, ipfs_endpoint(), placements={DATA: url})
    for path, src in releases["data"].sources.items():
        assert fs.cat_file(f"shardgate://{DATA}/{path}") == src, path
    env = {**os.environ, "SHARDGATE_TRUST": str(releases["key_pub"])}
    out = subprocess.run([sys.executable, "-m", "shardgate", "verify", DATA, "--endpoint", node_gateway.base,
                          "--endpoint", ipfs_endpoint()], capture_output=True, text=True, env=env, timeout=CMD_TIMEOUT_S)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count(f"{len(releases['data'].sources)} files") == 2, out.stdout


class Answer451(FlipProxy):
    """A proxy that passes manifests through and answers 451 for file bytes: a takedown."""

    def __init__(self, upstream: str):
        super().__init__(upstream, at=-1)
        handler = self.server.RequestHandlerClass
        passthrough = handler.do_GET

        def do_GET(h):
            if "/files/" in h.path:
                body = b'{"error": "taken down: court order"}'
                h.send_response(451)
                h.send_header("Content-Length", str(len(body)))
                h.end_headers()
                h.wfile.write(body)
            else:
                passthrough(h)

        handler.do_GET = do_GET


def test_a_takedown_ends_the_read_and_no_other_endpoint_is_asked(dir_gateway, releases):
    proxy = Answer451(dir_gateway.base)
    try:
        fs = sg_fs(releases, proxy.url, dir_gateway.base)
        with pytest.raises(shardgate.TakenDown, match="taken down"):
            fs.cat_file(f"shardgate://{DATA}/blobs/mid.bin")
    finally:
        proxy.close()


def test_a_misspelt_setting_is_an_error_naming_it(releases):
    with pytest.raises(shardgate.ConfigError, match="endpoint"):
        fsspec.filesystem("shardgate", endpoint=["http://127.0.0.1:1"], trust=[str(releases["key_pub"])],
                          skip_instance_cache=True)
