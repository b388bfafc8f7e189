"""The real curl and aria2c CLIs against the gateway; b3sum checks what they wrote."""
import re
import subprocess
from pathlib import Path

import pytest

from conftest import CMD_TIMEOUT_S, Gateway, b3sum, curl

ALL_FILES = ["empty.bin", "one.bin", "blobs/mid.bin", "blobs/big.bin", "records.jsonl",
             "table.parquet"]


@pytest.mark.parametrize("path", ALL_FILES)
def test_curl_whole_file_b3sum(gateway: Gateway, tmp_path: Path, path: str):
    entry = gateway.data.entry(path)
    r = curl(gateway.data_url(path), "-f", tmp=tmp_path)
    assert r.status == 200
    assert r.body == gateway.data.sources[path]
    assert b3sum(tmp_path / "curl.body") == entry["blake3"]
    assert int(r.headers["content-length"]) == entry["size"]
    assert r.headers["x-shardgate-cache"] in {"hit", "miss", "partial"}


@pytest.mark.parametrize("path", ["blobs/mid.bin", "blobs/big.bin", "table.parquet"])
def test_curl_range(gateway: Gateway, tmp_path: Path, path: str):
    size = gateway.data.entry(path)["size"]
    r = curl(gateway.data_url(path), "-r", "100-199", tmp=tmp_path)
    assert r.status == 206
    assert r.body == gateway.data.sources[path][100:200]
    assert r.headers["content-range"] == f"bytes 100-199/{size}"
    assert r.headers["content-length"] == "100"


@pytest.mark.parametrize("path", ALL_FILES)
def test_curl_head_headers(gateway: Gateway, tmp_path: Path, path: str):
    entry = gateway.data.entry(path)
    r = curl(gateway.data_url(path), "-I", tmp=tmp_path)  # curl -I writes the headers as body
    assert r.status == 200
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["etag"] == f'"{entry["blake3"]}"'
    assert int(r.headers["content-length"]) == entry["size"]
    assert r.headers["content-type"] == entry["media_type"]
    assert not r.headers["content-type"].startswith("text/html")
    assert "immutable" in r.headers["cache-control"]


def test_aria2c_segmented_download(gateway: Gateway, tmp_path: Path):
    entry = gateway.data.entry("blobs/big.bin")
    assert entry["size"] == 3 * 1024 * 1024
    out = subprocess.run(
        ["aria2c", "-x8", "-s8", "-k1M", "--allow-overwrite=true", "--auto-file-renaming=false",
         "--console-log-level=warn", "--summary-interval=0", "--timeout=30", "--max-tries=2",
         "-d", str(tmp_path), "-o", "big.bin", gateway.data_url("blobs/big.bin")],
        capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    assert out.returncode == 0, out.stdout + out.stderr
    assert b3sum(tmp_path / "big.bin") == entry["blake3"]
    assert (tmp_path / "big.bin").read_bytes() == gateway.data.sources["blobs/big.bin"]


def parse_multipart(body: bytes, boundary: str) -> list:
    """Splits a multipart/byteranges body into (headers, data) parts (RFC 2046 framing)."""
    pieces = (b"\r\n" + body).split(b"\r\n--" + boundary.encode())
    assert len(pieces) >= 3, body[:300]
    assert pieces[-1].startswith(b"--"), "missing close delimiter"
    parts = []
    for piece in pieces[1:-1]:
        head, sep, data = piece.partition(b"\r\n\r\n")
        assert sep, piece[:200]
        headers = {}
        for line in head.decode("latin-1").split("\r\n")[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, data))
    return parts


@pytest.mark.parametrize("path", ["blobs/mid.bin", "blobs/big.bin"])
def test_curl_multi_range(gateway: Gateway, tmp_path: Path, path: str):
    entry = gateway.data.entry(path)
    src = gateway.data.sources[path]
    r = curl(gateway.data_url(path), "-r", "0-9,100-109", tmp=tmp_path)
    assert r.status == 206
    m = re.fullmatch(r'multipart/byteranges;\s*boundary="?([^";]+)"?', r.headers["content-type"])
    assert m, r.headers["content-type"]
    assert int(r.headers["content-length"]) == len(r.body)
    parts = parse_multipart(r.body, m.group(1))
    assert [p[0]["content-range"] for p in parts] == [
        f"bytes 0-9/{entry['size']}", f"bytes 100-109/{entry['size']}"]
    assert [p[0]["content-type"] for p in parts] == [entry["media_type"]] * 2
    assert [p[1] for p in parts] == [src[0:10], src[100:110]]


@pytest.mark.parametrize("path", ["one.bin", "blobs/mid.bin", "blobs/big.bin"])
def test_unsatisfiable_range_416(gateway: Gateway, tmp_path: Path, path: str):
    size = gateway.data.entry(path)["size"]
    r = curl(gateway.data_url(path), "-H", "Range: bytes=99999999-", tmp=tmp_path)
    assert r.status == 416
    assert r.headers["content-range"] == f"bytes */{size}"


@pytest.mark.parametrize("path", ["empty.bin", "blobs/mid.bin", "table.parquet"])
def test_if_none_match_304(gateway: Gateway, tmp_path: Path, path: str):
    etag = f'"{gateway.data.entry(path)["blake3"]}"'
    r = curl(gateway.data_url(path), "-H", f"If-None-Match: {etag}", tmp=tmp_path)
    assert r.status == 304
    assert r.body == b""
    assert r.headers["etag"] == etag
    # A different ETag does not match: the full body comes back.
    r = curl(gateway.data_url(path), "-H", 'If-None-Match: "0000"', tmp=tmp_path)
    assert r.status == 200
    assert r.body == gateway.data.sources[path]
