"""Reads one file through `shardgate://` (every chunk verified by the client)
and through plain fsspec HTTP on the same gateway URL, in interleaved rounds.

  python python_client.py GATEWAY NAME@VERSION PATH KEY.pub SOURCE ROUNDS RANGES

Prints one JSON object: per reader, sequential MB/s per round and random
1 MiB range latencies, and the client's CPU seconds per GB.
"""
import gc
import json
import random
import statistics
import sys
import time

import fsspec

gw, release, path, key, source, rounds, ranges = sys.argv[1:8]
rounds, ranges = int(rounds), int(ranges)
MIB = 1 << 20
src = open(source, "rb").read()
size = len(src)
http_url = f"{gw}/v1/datasets/{release.replace('@', '/')}/files/{path}"
sg_url = f"shardgate://{release}/{path}"


def readers():
    http = fsspec.filesystem("http", skip_instance_cache=True)
    sg = fsspec.filesystem("shardgate", endpoints=[gw], trust=[key], skip_instance_cache=True)
    return {"fsspec-http": (http, http_url), "shardgate": (sg, sg_url)}


def sequential(fs, url):
    """1 MiB reads from start to end, as a loader streams a shard; checked against the source."""
    t0, c0 = time.perf_counter(), time.process_time()
    got = 0
    with fs.open(url, "rb") as f:
        while True:
            piece = f.read(MIB)
            if not piece:
                break
            if piece != src[got : got + len(piece)]:
                sys.exit(f"{url}: bytes at {got} differ from the source")
            got += len(piece)
    if got != size:
        sys.exit(f"{url}: read {got} bytes of {size}")
    return size / 1e6 / (time.perf_counter() - t0), time.process_time() - c0


def random_ranges(fs, url, offsets):
    lat = []
    for off in offsets:
        t0 = time.perf_counter()
        piece = fs.cat_file(url, off, off + MIB)
        lat.append(time.perf_counter() - t0)
        if piece != src[off : off + MIB]:
            sys.exit(f"{url}: range at {off} differs from the source")
    return lat


out = {name: {"seq_mbs": [], "seq_cpu_s_per_gb": [], "rand_ms": []} for name in ("fsspec-http", "shardgate")}
rng = random.Random(5)
offsets = [rng.randrange(0, size - MIB) for _ in range(ranges)]
for r in range(rounds):
    # fsspec's async filesystems are reference cycles: a dropped one (and the
    # client's chunk cache) is freed by the cycle collector, not at once.
    # Collect between steps so no round pays for the last one's garbage.
    gc.collect()
    for name, (fs, url) in readers().items():
        mbs, cpu = sequential(fs, url)
        out[name]["seq_mbs"].append(round(mbs, 1))
        out[name]["seq_cpu_s_per_gb"].append(round(cpu / (size / 1e9), 2))
    # Random ranges on fresh instances: the client's chunk cache starts empty each round.
    gc.collect()
    for name, (fs, url) in readers().items():
        out[name]["rand_ms"] += [x * 1000 for x in random_ranges(fs, url, offsets)]
for name, o in out.items():
    lat = sorted(o.pop("rand_ms"))
    o["rand_p50_ms"] = round(lat[len(lat) // 2], 2)
    o["rand_p99_ms"] = round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2)
    o["rand_mbs"] = round(len(lat) * MIB / 1e6 / (sum(lat) / 1000), 1)
    o["seq_median_mbs"] = statistics.median(o["seq_mbs"])
    o["seq_median_cpu"] = statistics.median(o["seq_cpu_s_per_gb"])
print(json.dumps(out))
