"""The torch-heavy S3 clients: MosaicML `streaming` and `s3torchconnector`.

They depend on torch (multi-gigabyte wheels), so they run only with
`HEAVY=1 bash conf/test.sh`, in a venv of their own
(`proxy/tests/clients/requirements-heavy.txt`)."""
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

if not os.environ.get("HEAVY"):
    pytest.skip("torch-heavy S3 clients run with HEAVY=1 bash conf/test.sh", allow_module_level=True)

from conftest import _pack, run, serve_listeners  # noqa: E402

SAMPLES = 3000


def _samples():
    rng = random.Random(11)
    return [{"id": i, "text": f"sample {i} " + "x" * (i % 97), "data": rng.randbytes(200 + (i * 37) % 4000)}
            for i in range(SAMPLES)]


@pytest.fixture(scope="module")
def heavy(tmp_path_factory, shardgate_bin):
    from streaming import MDSWriter

    root = tmp_path_factory.mktemp("heavy")
    run(shardgate_bin, "keygen", "--out", "key", cwd=root)
    samples = _samples()
    with MDSWriter(out=str(root / "mds"), columns={"id": "int", "text": "str", "data": "bytes"},
                   size_limit=1 << 20, compression=None) as w:
        for s in samples:
            w.write(s)
    assert len(list((root / "mds").glob("shard.*.mds"))) > 3
    rel = _pack(shardgate_bin, root, "mds", "mds")
    rng = random.Random(3)
    (root / "blobs").mkdir()
    for i in range(12):
        (root / "blobs" / f"b{i:02d}.bin").write_bytes(rng.randbytes(100_000 + 50_000 * i))
    blobs = _pack(shardgate_bin, root, "blobs", "blobs")
    creds = root / "s3.toml"
    out = run(shardgate_bin, "tenant", "s3-key", "--tenant", "trainer", "--credentials", str(creds), cwd=root)
    kv = dict(line.split(" = ", 1) for line in out.strip().splitlines())
    lines = ['[server]', 'listen = "127.0.0.1:0"', '[trust]', f'keys = ["{root / "key.pub"}"]']
    for r in (rel, blobs):
        lines += ['[[releases]]', f'manifest = "{r.dir / "manifest.json"}"',
                  '[[origins]]', 'kind = "dir"', f'path = "{r.dir}"']
    lines += ['[[tenants]]', 'id = "trainer"', 'datasets = ["mds", "blobs"]',
              '[s3]', 'listen = "127.0.0.1:0"', f'credentials = "{creds}"']
    (root / "gw.toml").write_text("\n".join(lines) + "\n")
    with serve_listeners(shardgate_bin, root / "gw.toml", s3_api=True) as (base, _, s3root):
        yield {"root": root, "base": base, "s3root": s3root, "samples": samples, "blobs": blobs,
               "key": kv["aws_access_key_id"], "secret": kv["aws_secret_access_key"]}


def test_mosaicml_streaming_dataset_reads_every_sample(heavy, monkeypatch, tmp_path):
    from streaming import StreamingDataset

    monkeypatch.setenv("S3_ENDPOINT_URL", heavy["base"] + "/s3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", heavy["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", heavy["secret"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    ds = StreamingDataset(remote="s3://mds/1.0.0", local=str(tmp_path / "cache"), shuffle=False, batch_size=1)
    got = list(ds)
    assert len(got) == SAMPLES
    for want, s in zip(heavy["samples"], got):
        assert (s["id"], s["text"], s["data"]) == (want["id"], want["text"], want["data"])


def test_s3torchconnector_map_dataset(heavy, monkeypatch):
    from s3torchconnector import S3ClientConfig, S3MapDataset

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", heavy["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", heavy["secret"])
    ds = S3MapDataset.from_prefix("s3://blobs/1.0.0/", region="us-east-1", endpoint=heavy["s3root"],
                                  s3client_config=S3ClientConfig(force_path_style=True))
    blobs = heavy["blobs"]
    assert len(ds) == 12
    for i in range(len(ds)):
        obj = ds[i]
        path = obj.key.removeprefix("1.0.0/")
        assert obj.read() == blobs.sources[path], path
    # The ranged reader takes the size from HeadObject, then reads by range.
    from s3torchconnector import S3Reader  # noqa: F401  (the reader type the dataset hands out)
    obj = ds[5]
    obj.seek(12345)
    assert obj.read(1000) == blobs.sources[obj.key.removeprefix("1.0.0/")][12345:13345]
