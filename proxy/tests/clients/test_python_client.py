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
