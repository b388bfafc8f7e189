"""webdataset streams tar shards from the gateway over HTTP (it shells out to curl)."""
import webdataset as wds

from conftest import Gateway


def test_webdataset_iterates_every_sample_over_http(gateway: Gateway):
    rel = gateway.wds
    shards = sorted(f["path"] for f in rel.manifest["files"])
    assert len(shards) >= 3, shards
    assert shards == [f"shard-{i:06d}.tar" for i in range(len(shards))]
    assert rel.manifest["records"]["webdataset_samples"] == 200

    expected = {}
    for i in range(200):
        key = f"train/{i:05d}"
        expected[key] = ((rel.src / f"{key}.jpg").read_bytes(), (rel.src / f"{key}.cls").read_bytes())

    pattern = gateway.url(rel, f"shard-{{000000..{len(shards) - 1:06d}}}.tar")
    seen = {}
    for sample in wds.WebDataset(pattern, shardshuffle=False):
        assert sample["__key__"] not in seen, sample["__key__"]
        assert sample["__url__"].startswith(gateway.base)
        seen[sample["__key__"]] = (sample["jpg"], sample["cls"])
    assert len(seen) == 200
    assert seen.keys() == expected.keys()
    for key, value in expected.items():
        assert seen[key] == value, key

