"""An encrypted release on the real dev node, read through the gateway by real clients.

The node holds only ciphertext (no 4 KiB window of plaintext in anything published to it);
curl, aria2c -x8, fsspec, pyarrow and webdataset read the plaintext byte-exact through a
gateway that holds the key, and b3sum agrees. Destroying the key envelope makes the gateway
refuse with the reason while the bytes on the node stay as they were."""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests
import webdataset as wds
from fsspec.implementations.http import HTTPFileSystem

from conftest import CMD_TIMEOUT_S, _make_data_source, _make_wds_source, b3sum, curl, run, serve_with_usage


def _node():
    api = os.environ.get("DEV_NODE_API")
    if not api:
        pytest.fail("DEV_NODE_API is not set: run conf/test.sh (it starts the dev node)")
    return api, os.environ.get("DEV_NODE_API_PREFIX", "/api/v0")


def _cat(api: str, prefix: str, cid: str) -> bytes:
    r = requests.post(f"{api}{prefix}/cat", params={"arg": cid}, timeout=60)
    r.raise_for_status()
    return r.content


class Sealed:
    pass


@pytest.fixture(scope="module")
def sealed(tmp_path_factory, shardgate_bin: str):
    root = tmp_path_factory.mktemp("sealed")
    run(shardgate_bin, "keygen", "--out", "key", cwd=root)
    subprocess.run(["age-keygen", "-o", "gw.key"], cwd=root, check=True, capture_output=True)
    recipient = re.search(r"# public key: (\S+)", (root / "gw.key").read_text()).group(1)
    _make_data_source(root / "data")
    _make_wds_source(root / "wds")
    api, prefix = _node()
    s = Sealed()
    s.root, s.api, s.prefix = root, api, prefix
    s.releases = {}
    for src, name, extra in (("data", "sealed", ()), ("wds", "sealedwds", ("--format", "webdataset",
                                                                          "--shard-size", "1MiB"))):
        out = root / f"{src}-out"
        run(shardgate_bin, "pack", src, "--name", name, "--version", "1.0.0", "--key", "key",
            "--out", out.name, "--chunk-size", "256KiB", "--encrypt", "*", "--recipient", recipient,
            *extra, cwd=root)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["schema"] == "shardgate.manifest/v2"
        assert all("encryption" in f for f in manifest["files"])
        run(shardgate_bin, "publish", out.name, "--node", api, "--api-prefix", prefix, cwd=root)
        placement = json.loads((out / "placement.json").read_text())
        # The gateway keeps manifest and placement only: every byte comes from the node.
        shutil.rmtree(out / "files")
        shutil.rmtree(out / "tables", ignore_errors=True)
        s.releases[name] = (out, manifest, placement)
    out = subprocess.run([shardgate_bin, "release", "token"], cwd=root, capture_output=True, text=True,
                         timeout=CMD_TIMEOUT_S, check=True)
    s.token = out.stdout.strip()
    token_hash = re.search(r"blake3:[0-9a-f]{64}", out.stderr).group(0)
    manifests = "".join(f'[[releases]]\nmanifest = "{o / "manifest.json"}"\n' for o, _, _ in s.releases.values())
    s.cfg = root / "gateway.toml"
    s.cfg.write_text(
        '[server]\nlisten = "127.0.0.1:0"\n'
        f'[trust]\nkeys = ["{root / "key.pub"}"]\n'
        f'{manifests}'
        f'[[origins]]\nkind = "btfs-api"\nurl = "{api}"\napi_prefix = "{prefix}"\n'
        '[hot_tier]\ncapacity = "64MiB"\n'
        f'[registry]\npath = "{root / "registry.redb"}"\n'
        f'[keys]\nage_identities = ["{root / "gw.key"}"]\n'
        f'[grpc]\nlisten = "127.0.0.1:0"\nadmin_tokens = ["{token_hash}"]\n')
    s.bin = shardgate_bin
    return s


@pytest.fixture(scope="module")
def gw(sealed):
    with serve_with_usage(sealed.bin, sealed.cfg, usage_api=True) as (base, grpc):
        sealed.base, sealed.grpc = base, grpc
        for name, (out, _, _) in sealed.releases.items():
            env = sealed.root / f"{out.name}.keys.json"
            assert env.exists()
            run(sealed.bin, "keys", "register", str(env), "--api", f"http://{grpc}", "--token", sealed.token,
                cwd=sealed.root)
        yield sealed


def url(s, name: str, path: str) -> str:
    return f"{s.base}/v1/datasets/{name}/1.0.0/files/{path}"


def source(s, name: str, path: str) -> bytes:
    return (s.root / ("data" if name == "sealed" else "wds") / path).read_bytes()


def test_the_node_holds_no_4kib_window_of_plaintext(sealed):
    """Every blob published (files, tables, manifest) fetched back from the node; any 4 KiB
    window of a plaintext file contains an aligned 2 KiB block of it, so none may appear."""
    blocks = []
    for src in ("data", "wds"):
        for p in sorted((sealed.root / src).rglob("*")):
            if p.is_file():
                b = p.read_bytes()
                blocks += [b[i:i + 2048] for i in range(0, len(b) - 2047, 2048)]
    assert len(blocks) > 1000
    checked = 0
    for out, manifest, placement in sealed.releases.values():
        for h, blob in placement["blobs"].items():
            data = _cat(sealed.api, sealed.prefix, blob["cid"])
            assert len(data) == blob["size"]
            for block in blocks:
                assert block not in data, f"plaintext in blob {h} on the node"
            checked += 1
    assert checked >= 10


@pytest.mark.parametrize("path", ["empty.bin", "one.bin", "blobs/mid.bin", "blobs/big.bin", "records.jsonl",
                                  "table.parquet"])
def test_curl_reads_plaintext_and_b3sum_agrees(gw, tmp_path: Path, path: str):
    r = curl(url(gw, "sealed", path), "-f", tmp=tmp_path)
    assert r.status == 200
    plain = source(gw, "sealed", path)
    assert r.body == plain
    want = b3sum(gw.root / "data" / path)
    assert b3sum(tmp_path / "curl.body") == want
    assert r.headers["etag"] == f'"{want}"', "the ETag is the plaintext's BLAKE3"
    assert int(r.headers["content-length"]) == len(plain)
    if len(plain) > 262_201:
        rr = curl(url(gw, "sealed", path), "-r", "262100-262200", tmp=tmp_path)
        assert rr.status == 206 and rr.body == plain[262100:262201]


def test_aria2c_x8_reads_plaintext(gw, tmp_path: Path):
    out = subprocess.run(
        ["aria2c", "-x8", "-s8", "-k1M", "--allow-overwrite=true", "--auto-file-renaming=false",
         "--console-log-level=warn", "--summary-interval=0", "--timeout=30", "--max-tries=2",
         "-d", str(tmp_path), "-o", "big.bin", url(gw, "sealed", "blobs/big.bin")],
        capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    assert out.returncode == 0, out.stdout + out.stderr
    assert b3sum(tmp_path / "big.bin") == b3sum(gw.root / "data" / "blobs" / "big.bin")


def test_fsspec_and_pyarrow_read_plaintext(gw):
    fs = HTTPFileSystem(skip_instance_cache=True)
    u = url(gw, "sealed", "blobs/mid.bin")
    plain = source(gw, "sealed", "blobs/mid.bin")
    assert fs.size(u) == len(plain)
    with fs.open(u, "rb", block_size=64 * 1024) as f:
        f.seek(200_000)
        assert f.read(50_000) == plain[200_000:250_000]
    assert fs.cat_file(u, start=262_000, end=262_500) == plain[262_000:262_500]
    local = pq.read_table(gw.root / "data" / "table.parquet")
    remote = pq.read_table(url(gw, "sealed", "table.parquet"), filesystem=fs)
    assert remote.equals(local)


def test_webdataset_iterates_encrypted_shards(gw):
    _, manifest, _ = gw.releases["sealedwds"]
    shards = sorted(f["path"] for f in manifest["files"])
    assert len(shards) >= 3
    pattern = url(gw, "sealedwds", f"shard-{{000000..{len(shards) - 1:06d}}}.tar")
    seen = {}
    for sample in wds.WebDataset(pattern, shardshuffle=False):
        seen[sample["__key__"]] = (sample["jpg"], sample["cls"])
    assert len(seen) == 200
    for i in (0, 99, 199):
        key = f"train/{i:05d}"
        assert seen[key] == ((gw.root / "wds" / f"{key}.jpg").read_bytes(),
                             (gw.root / "wds" / f"{key}.cls").read_bytes())


def test_ciphertext_by_blob_matches_the_node_and_decrypts_offline(gw, tmp_path: Path):
    out, manifest, placement = gw.releases["sealed"]
    entry = next(f for f in manifest["files"] if f["path"] == "blobs/big.bin")
    r = curl(f"{gw.base}/v1/blobs/{entry['blake3']}", "-f", tmp=tmp_path)
    assert r.status == 200 and r.headers["content-type"] == "application/octet-stream"
    assert b3sum(tmp_path / "curl.body") == entry["blake3"]
    assert r.body == _cat(gw.api, gw.prefix, placement["blobs"][entry["blake3"]]["cid"])
    digest = run(gw.bin, "decrypt", str(out), "--path", "blobs/big.bin", "--in", str(tmp_path / "curl.body"),
                 "--envelope", str(gw.root / f"{out.name}.keys.json"), "-i", str(gw.root / "gw.key"),
                 "--out", str(tmp_path / "big.bin"), cwd=gw.root).strip()
    assert digest == b3sum(gw.root / "data" / "blobs" / "big.bin") == b3sum(tmp_path / "big.bin")


def test_destroying_the_envelope_refuses_with_the_reason_and_the_node_is_untouched(gw, tmp_path: Path):
    out, manifest, placement = gw.releases["sealed"]
    before = {h: b["cid"] for h, b in placement["blobs"].items()}
    hashes = {h: __import__("hashlib").sha256(_cat(gw.api, gw.prefix, c)).hexdigest() for h, c in before.items()}
    assert curl(url(gw, "sealed", "one.bin"), tmp=tmp_path).status == 200
    run(gw.bin, "keys", "destroy", "sealed@1.0.0", "--api", f"http://{gw.grpc}", "--token", gw.token, cwd=gw.root)
    r = curl(url(gw, "sealed", "one.bin"), tmp=tmp_path)
    assert r.status == 403
    assert b"no key envelope is registered" in r.body
    after = {h: __import__("hashlib").sha256(_cat(gw.api, gw.prefix, c)).hexdigest() for h, c in before.items()}
    assert after == hashes, "the release on the node changed"
    # Restored with an envelope made by the age CLI (the data key opened with `age -d` from
    # shardgate's envelope, wrapped again with `age -e`): the gateway serves again.
    env = json.loads((gw.root / f"{out.name}.keys.json").read_text())
    (tmp_path / "sg.age").write_text(env["age"])
    subprocess.run(["age", "-d", "-i", str(gw.root / "gw.key"), "-o", str(tmp_path / "data.key"),
                    str(tmp_path / "sg.age")], check=True, capture_output=True, timeout=CMD_TIMEOUT_S)
    assert (tmp_path / "data.key").stat().st_size == 32
    recipient = re.search(r"# public key: (\S+)", (gw.root / "gw.key").read_text()).group(1)
    subprocess.run(["age", "-e", "-a", "-r", recipient, "-o", str(tmp_path / "cli.age"), str(tmp_path / "data.key")],
                   check=True, capture_output=True, timeout=CMD_TIMEOUT_S)
    assert (tmp_path / "cli.age").read_text() != env["age"]
    run(gw.bin, "keys", "from-age", str(tmp_path / "cli.age"), "sealed@1.0.0", "--key-id", env["key_id"],
        "--out", str(tmp_path / "cli.json"), cwd=gw.root)
    run(gw.bin, "keys", "register", str(tmp_path / "cli.json"), "--api", f"http://{gw.grpc}",
        "--token", gw.token, cwd=gw.root)
    assert curl(url(gw, "sealed", "one.bin"), tmp=tmp_path).body == b"\x5a"
    exported = subprocess.run([gw.bin, "keys", "export", "sealed@1.0.0", "--api", f"http://{gw.grpc}",
                               "--token", gw.token], capture_output=True, timeout=CMD_TIMEOUT_S, check=True)
    assert json.loads(exported.stdout)["age"] == (tmp_path / "cli.age").read_text()
