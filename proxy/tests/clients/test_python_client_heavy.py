"""The Python client under PyTorch's DataLoader: forked workers, each reading
its share of WebDataset shards through `shardgate://`, every byte verified.

torch is a multi-gigabyte install, so this runs only with
`HEAVY=1 bash conf/test.sh`, in the heavy venv
(`proxy/tests/clients/requirements-heavy.txt`, plus the client)."""
import io
import os
import tarfile

import pytest

if not os.environ.get("HEAVY"):
    pytest.skip("torch-heavy clients run with HEAVY=1 bash conf/test.sh", allow_module_level=True)

import fsspec  # noqa: E402

WDS = "clientswds@1.0.0"


class Shards:
    """An IterableDataset over tar shards: each worker opens its own share."""

    def __init__(self, urls, options):
        self.urls, self.options = urls, options

    def __iter__(self):
        import torch.utils.data as tud

        info = tud.get_worker_info()
        mine = self.urls if info is None else self.urls[info.id :: info.num_workers]
        for url in mine:
            with fsspec.open(url, "rb", **self.options) as f, tarfile.open(fileobj=f, mode="r|") as tar:
                for member in tar:
                    if member.isfile():
                        yield member.name, tar.extractfile(member).read(), os.getpid()


def test_dataloader_workers_read_verified_shards(dir_gateway, releases):
    import torch.utils.data as tud

    torch_ds_cls = type("ShardsDataset", (Shards, tud.IterableDataset), {})
    shards = sorted(p for p in releases["wds"].sources if p.endswith(".tar"))
    options = {"endpoints": [dir_gateway.base], "trust": [str(releases["key_pub"])], "deadline": 60}
    # The parent reads first (as a loader reading a schema would), then the workers fork.
    assert fsspec.filesystem("shardgate", **options).cat_file(f"shardgate://{WDS}/{shards[0]}", 0, 512)
    loader = tud.DataLoader(torch_ds_cls([f"shardgate://{WDS}/{s}" for s in shards], options), batch_size=None,
                            num_workers=2, multiprocessing_context="fork")
    got, pids = {}, set()
    for name, data, pid in loader:
        got[name] = bytes(data)
        pids.add(int(pid))
    src = releases["wds"].src / "train"
    want = {p.name: p.read_bytes() for p in src.iterdir()}
    assert {n.rsplit("/", 1)[-1]: d for n, d in got.items()} == want
    assert len(pids) == 2, f"samples came from {len(pids)} worker(s)"
