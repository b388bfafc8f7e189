"""fsspec's HTTPFileSystem (aiohttp) reads releases through the gateway: sizes, seeks, ranges."""
import json
import random

import pytest

from conftest import CHUNK_SIZE, Gateway

BINARIES = ["empty.bin", "one.bin", "blobs/mid.bin", "blobs/big.bin"]


def test_served_manifest_is_the_signed_one(gateway: Gateway, fs):
    rel = gateway.data
    served = json.loads(fs.cat_file(f"{gateway.base}/v1/datasets/{rel.name}/{rel.version}/manifest"))
    assert served == rel.manifest
    # The seek tests below straddle these chunk boundaries.
    assert {f["chunk_size"] for f in served["files"]} == {CHUNK_SIZE}


@pytest.mark.parametrize("path", BINARIES + ["records.jsonl", "table.parquet"])
def test_size_and_info_match_manifest(gateway: Gateway, fs, path: str):
    entry = gateway.data.entry(path)
    url = gateway.data_url(path)
    assert fs.size(url) == entry["size"] == len(gateway.data.sources[path])
    info = fs.info(url)
    assert info["size"] == entry["size"]
    assert info["type"] == "file"


# (offset, length): inside a chunk, straddling 256 KiB boundaries, spanning several
# chunks, and running past the end of the file.
BIG_READS = [
    (0, 1), (0, 4096), (CHUNK_SIZE - 10, 20), (CHUNK_SIZE - 1, 2), (CHUNK_SIZE, 7),
    (2 * CHUNK_SIZE - 1000, 3 * CHUNK_SIZE + 17), (5 * CHUNK_SIZE + 3, 100_000),
    (3 * 1024 * 1024 - 5, 50), (1_000_003, 1),
]
MID_READS = [(0, 300_000), (CHUNK_SIZE - 4, 8), (299_990, 100), (123_456, 1)]


@pytest.mark.parametrize("cache_type", ["readahead", "none"])
@pytest.mark.parametrize("path,reads", [("blobs/big.bin", BIG_READS), ("blobs/mid.bin", MID_READS)])
def test_open_seek_read(gateway: Gateway, fs, path, reads, cache_type):
    src = gateway.data.sources[path]
    with fs.open(gateway.data_url(path), "rb", block_size=64 * 1024, cache_type=cache_type) as f:
        assert f.size == len(src)
        for offset, length in reads:
            f.seek(offset)
            got = f.read(length)
            assert got == src[offset:offset + length], (offset, length)
            assert f.tell() == min(offset + length, len(src))
        # Sequential reads after a seek continue where the last one stopped.
        f.seek(CHUNK_SIZE - 3)
        assert f.read(5) + f.read(5) == src[CHUNK_SIZE - 3:CHUNK_SIZE + 7]


@pytest.mark.parametrize("path", BINARIES + ["records.jsonl"])
def test_cat_file_whole(gateway: Gateway, fs, path: str):
    assert fs.cat_file(gateway.data_url(path)) == gateway.data.sources[path]


@pytest.mark.parametrize("start,end", [
    (0, 1), (100, 200), (CHUNK_SIZE - 50, CHUNK_SIZE + 50), (0, 3 * 1024 * 1024),
    (3 * 1024 * 1024 - 1, None), (1_500_000, None), (-1000, None),
])
def test_cat_file_start_end(gateway: Gateway, fs, start, end):
    src = gateway.data.sources["blobs/big.bin"]
    got = fs.cat_file(gateway.data_url("blobs/big.bin"), start=start, end=end)
    assert got == src[start:end]


def test_cat_ranges_random(gateway: Gateway, fs):
    rng = random.Random(42)
    urls, starts, ends, expected = [], [], [], []
    for i in range(20):
        path = "blobs/big.bin" if i % 3 else "blobs/mid.bin"
        src = gateway.data.sources[path]
        start = rng.randrange(len(src) - 1)
        end = min(len(src), start + rng.randrange(1, 2 * CHUNK_SIZE))
        urls.append(gateway.data_url(path))
        starts.append(start)
        ends.append(end)
        expected.append(src[start:end])
    got = fs.cat_ranges(urls, starts, ends)
    assert len(got) == 20
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g == e, f"range {i}: {starts[i]}-{ends[i]} of {urls[i]}"
