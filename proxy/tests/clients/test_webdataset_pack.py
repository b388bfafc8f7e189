"""`shardgate pack --format webdataset` writes shards the webdataset package reads."""
import hashlib
import json
from pathlib import Path

import webdataset as wds

from conftest import run


def test_webdataset_reads_every_sample_of_packed_shards(tmp_path: Path, shardgate_bin: str):
    src = tmp_path / "src"
    (src / "train").mkdir(parents=True)
    expected = {}
    for i in range(120):
        key = f"train/{i:05d}"
        img = hashlib.blake2b(str(i).encode(), digest_size=64).digest() * (50 + i)
        (src / f"{key}.jpg").write_bytes(img)
        (src / f"{key}.cls").write_text(str(i % 7))
        expected[key] = (img, str(i % 7))
    run(shardgate_bin, "keygen", "--out", "key", cwd=tmp_path)
    run(shardgate_bin, "pack", "src", "--name", "wds", "--version", "1.0.0", "--key", "key",
        "--out", "out", "--format", "webdataset", "--shard-size", "256KiB", cwd=tmp_path)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    shards = [str(tmp_path / "out" / "files" / f["path"]) for f in manifest["files"]]
    assert len(shards) > 3

    seen = {}
    for sample in wds.WebDataset(shards, shardshuffle=False):
        seen[sample["__key__"]] = (sample["jpg"], sample["cls"].decode())
    assert seen == expected
    assert manifest["records"]["webdataset_samples"] == 120
