"""Replication, pin health and repair against real dev nodes started here:
publish with a replication target, lose a pin (pin/rm + repo/gc) and watch
the gateway repair it from the other node, stop a node and watch a spare
take copies, and a node that serves damaged bytes never used as a source."""
import http.server
import json
import os
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import CMD_TIMEOUT_S, _pack, run, serve_listeners
from test_usage import REPO as REPO_ROOT, new_key

PREFIX = "/api/v0"
WAIT_S = 30  # every wait below is bounded by this


class Node:
    """A dev node of its own (conf/dev-node/start.sh), stopped at the end."""

    def __init__(self, state: Path):
        self.state = state
        subprocess.run(["bash", str(REPO_ROOT / "conf/dev-node/start.sh"), str(state)], check=True,
                       capture_output=True, timeout=120)
        env = dict(line.split("=", 1) for line in (state / "env").read_text().split())
        self.api = env["DEV_NODE_API"]

    def call(self, command: str, **args) -> dict:
        q = "&".join(f"{k}={v}" for k, v in args.items())
        req = urllib.request.Request(f"{self.api}{PREFIX}/{command}?{q}", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=60) as r:
            text = r.read().decode()
        return json.loads(text.splitlines()[-1]) if text.strip() else {}

    def pinned(self, cid: str) -> bool:
        try:
            # The node may name the CID in another multibase in its answer: any key means pinned.
            return bool(self.call("pin/ls", arg=cid, type="recursive").get("Keys"))
        except urllib.error.HTTPError as e:
            if b"not pinned" in e.read():
                return False
            raise

    def lose(self, cid: str):
        """Unpins and garbage-collects, as a node that lost the blob."""
        self.call("pin/rm", arg=cid)
        self.call("repo/gc")
        assert not self.pinned(cid)

    def stop(self):
        subprocess.run(["bash", str(REPO_ROOT / "conf/dev-node/stop.sh"), str(self.state)], capture_output=True,
                       timeout=60)


class NodeProxy:
    """An HTTP proxy in front of a node's API: `pass`, `down` (502 for everything) or `flip-cat`
    (one bit flipped in every `cat` answer; everything else passes)."""

    def __init__(self, upstream: str, mode: str = "pass"):
        proxy = self
        self.mode = mode

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                if proxy.mode == "down":
                    self.send_response(502)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type",)}
                req = urllib.request.Request(upstream + self.path, data=body, headers=headers, method="POST")
                try:
                    resp = urllib.request.urlopen(req, timeout=60)
                except urllib.error.HTTPError as e:
                    resp = e
                data = bytearray(resp.read())
                if proxy.mode == "flip-cat" and "/cat?" in self.path and data:
                    data[len(data) // 2] ^= 0x10
                self.send_response(resp.status)
                self.send_header("Content-Type", resp.headers.get("Content-Type", "application/octet-stream"))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(bytes(data))

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    root = tmp_path_factory.mktemp("nodes")
    started = [Node(root / n) for n in ("a", "b", "c")]
    yield started
    for n in started:
        n.stop()


def publish(bin_path, rel_dir: Path, *node_urls: str, replicas: int):
    args = ["publish", str(rel_dir), "--api-prefix", PREFIX, "--replicas", str(replicas)]
    for u in node_urls:
        args += ["--node", u]
    out = subprocess.run([bin_path, *args], capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    assert out.returncode == 0, out.stderr
    return out.stderr


def gateway_config(root: Path, key_pub: Path, rel_dir: Path, origins: list, nodes: list, spares: list,
                   token_hash: str) -> Path:
    lines = ['[server]', 'listen = "127.0.0.1:0"', '[trust]', f'keys = ["{key_pub}"]',
             '[[releases]]', f'manifest = "{rel_dir / "manifest.json"}"']
    for o in origins:
        lines += ['[[origins]]', 'kind = "btfs-api"', f'url = "{o}"', f'api_prefix = "{PREFIX}"']
    lines += ['[registry]', f'path = "{root / "registry.redb"}"',
              '[grpc]', 'listen = "127.0.0.1:0"', f'admin_tokens = ["{token_hash}"]',
              '[pin_health]', 'enabled = true', 'interval = "1s"', 'timeout = "10s"', 'repair_objective = "1h"']
    for table, urls in (("nodes", nodes), ("spares", spares)):
        for u in urls:
            lines += [f'[[pin_health.{table}]]', f'url = "{u}"', f'api_prefix = "{PREFIX}"']
    path = root / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def status(bin_path, api: str, token: str, release: str) -> dict:
    out = subprocess.run([bin_path, "release", "status", release, "--api", f"http://{api}"], capture_output=True,
                         text=True, timeout=CMD_TIMEOUT_S, env={**os.environ, "SHARDGATE_ADMIN_TOKEN": token})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_for(what: str, check, seconds: float = WAIT_S):
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.3)
    pytest.fail(f"{what} did not happen within {seconds} s (last: {last})")


def metric(base: str, name: str) -> float:
    text = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    return sum(float(m.group(1)) for m in re.finditer(rf"^shardgate_{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def failed_samples(base: str) -> float:
    text = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    m = re.search(r'^shardgate_pin_samples_total\{result="failed"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def packed(shardgate_bin, tmp_path, name: str, *extra: str) -> tuple:
    run(shardgate_bin, "keygen", "--out", "key", cwd=tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(900_000))
    (src / "small.txt").write_text("hello\n")
    rel = _pack(shardgate_bin, tmp_path, "src", name, *extra)
    return rel, tmp_path / "key.pub"


def test_publish_places_every_blob_on_the_replication_target(nodes, shardgate_bin, tmp_path):
    a, b, _ = nodes
    # The target comes from the signed envelope: `replication_target = 2`.
    (tmp_path / "meta.toml").write_text("replication_target = 2\n")
    rel, _ = packed(shardgate_bin, tmp_path, "replicated", "--meta", str(tmp_path / "meta.toml"))
    assert rel.manifest["envelope"]["replication_target"] == 2
    out = subprocess.run([shardgate_bin, "publish", str(rel.dir), "--api-prefix", PREFIX, "--node", a.api,
                          "--node", b.api], capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    assert out.returncode == 0 and "on 2 of 2 node(s) per blob" in out.stderr, out.stderr
    placement = json.loads((rel.dir / "placement.json").read_text())
    assert len(placement["blobs"]) == 4  # two files, one chunk table, the manifest
    for h, blob in placement["blobs"].items():
        assert blob["nodes"] == [a.api, b.api], h
        assert a.pinned(blob["cid"]) and b.pinned(blob["cid"]), h
    again = publish(shardgate_bin, rel.dir, a.api, b.api, replicas=2)
    assert "0 copies added" in again and "8 already pinned" in again, again
    # A rerun with a lower target, naming A twice (once with a trailing slash): A is one node,
    # and B, not asked once A met the target, stays in the placement as a holder.
    lower = publish(shardgate_bin, rel.dir, a.api + "/", a.api, b.api, replicas=1)
    assert "on 1 of 2 node(s)" in lower and "0 copies added" in lower, lower
    placement = json.loads((rel.dir / "placement.json").read_text())
    assert all(blob["nodes"] == [a.api, b.api] for blob in placement["blobs"].values()), placement
    # More copies than nodes is refused, naming both numbers.
    out = subprocess.run([shardgate_bin, "publish", str(rel.dir), "--api-prefix", PREFIX, "--replicas", "3",
                          "--node", a.api, "--node", b.api], capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    assert out.returncode != 0 and "replication target 3 needs at least 3 nodes; 2 given" in out.stderr


def test_a_lost_pin_is_repaired_and_a_spare_takes_a_gone_nodes_copies(nodes, shardgate_bin, tmp_path):
    a, b, c = nodes
    rel, key_pub = packed(shardgate_bin, tmp_path, "repaired")
    publish(shardgate_bin, rel.dir, a.api, b.api, replicas=2)
    placement = json.loads((rel.dir / "placement.json").read_text())
    big = next(h for h, blob in placement["blobs"].items() if blob["kind"] == "file" and blob["size"] > 800_000)
    cid = placement["blobs"][big]["cid"]
    token, token_hash = new_key(shardgate_bin, "release", "token", cwd=tmp_path)
    spare = NodeProxy(c.api, mode="down")  # the spare is not up yet
    try:
        config = gateway_config(tmp_path, key_pub, rel.dir, [a.api, b.api], [a.api, b.api], [spare.url], token_hash)
        with serve_listeners(shardgate_bin, config, usage_api=True) as (base, api, _):
            first = wait_for("a first pin-health round", lambda: (s := status(shardgate_bin, api, token,
                                                                                 "repaired@1.0.0"))["checked"] and s)
            assert first["under_replicated"] == 0 and first["replication_target"] == 2, first
            assert {n["node"]: n["holds"] for n in first["nodes"] if not n["spare"]} == {a.api: 4, b.api: 4}
            # Each node's block sample read a chunk back and verified it.
            assert all(n["sample"].endswith("verified") and not n["sample_failed"]
                       for n in first["nodes"] if not n["spare"]), first

            # B loses the big file: found within a round, repaired from A, verified.
            t0 = time.monotonic()
            b.lose(cid)
            fixed = wait_for("the repair of B", lambda: next(
                (r for r in status(shardgate_bin, api, token, "repaired@1.0.0")["repairs"]
                 if r["node"] == b.api and r["ok"]), None))
            assert fixed["source"] == a.api and fixed["blob"] == big, fixed
            assert fixed["within_objective"] and time.monotonic() - t0 < WAIT_S
            assert b.pinned(cid)
            assert metric(base, "pin_repairs_total") >= 1 and metric(base, "pin_repair_seconds_count") >= 1
            # The dashboard's SLO panel: the repair, against the objective (admin tokens read reports).
            req = urllib.request.Request(f"{base}/v1/reports/summary", headers={"Authorization": f"Bearer {token}"})
            panel = json.loads(urllib.request.urlopen(req, timeout=10).read())["slo"]["pin_health"]
            assert panel["repairs_ok"] >= 1 and panel["met"] is True and panel["repair_objective_s"] == 3600, panel

            # A goes away: under-replicated, still served from B.
            a.stop()
            down = wait_for("A reported unreachable", lambda: (s := status(
                shardgate_bin, api, token, "repaired@1.0.0"))["under_replicated"] == 4 and s)
            assert not next(n for n in down["nodes"] if n["node"] == a.api)["reachable"]
            assert metric(base, "pin_under_replicated_blobs") == 4
            got = urllib.request.urlopen(f"{base}/v1/datasets/repaired/1.0.0/files/big.bin", timeout=30).read()
            assert got == (rel.src / "big.bin").read_bytes()

            # The spare comes up: it takes a verified copy of every blob, and the count is restored.
            spare.mode = "pass"
            restored = wait_for("copies on the spare", lambda: (s := status(
                shardgate_bin, api, token, "repaired@1.0.0"))["under_replicated"] == 0 and s)
            on_spare = next(n for n in restored["nodes"] if n["node"] == spare.url)
            assert on_spare["spare"] and on_spare["holds"] == 4, restored
            # While the spare was down it was skipped, not counted as failed repairs.
            assert not [r for r in restored["repairs"] if r["node"] == spare.url and not r["ok"]], restored
            assert all(c.pinned(blob["cid"]) for blob in placement["blobs"].values())
        # Every repair is in the audit trail, hash-chained.
        log = tmp_path / "audit.jsonl"
        with serve_listeners(shardgate_bin, config, usage_api=True) as (_, api, _):
            out = subprocess.run([shardgate_bin, "audit", "export", "--api", f"http://{api}", "-o", str(log)],
                                 capture_output=True, text=True, timeout=CMD_TIMEOUT_S,
                                 env={**os.environ, "SHARDGATE_ADMIN_TOKEN": token})
            assert out.returncode == 0, out.stderr
        repairs = [json.loads(line) for line in log.read_text().splitlines()]
        assert [r["event"] for r in repairs][:5] == ["repair"] * 5
        assert repairs[0]["detail"]["node"] == b.api and repairs[0]["detail"]["source"] == a.api
        ok = subprocess.run([shardgate_bin, "audit", "verify", str(log)], capture_output=True, text=True)
        assert ok.returncode == 0, ok.stdout
    finally:
        spare.close()


def test_a_node_serving_damaged_bytes_is_never_a_repair_source(shardgate_bin, tmp_path):
    root = tmp_path / "nodes"
    x, y = Node(root / "x"), Node(root / "y")
    flip = NodeProxy(x.api, mode="pass")
    try:
        rel, key_pub = packed(shardgate_bin, tmp_path, "damaged")
        publish(shardgate_bin, rel.dir, flip.url, y.api, replicas=2)
        placement = json.loads((rel.dir / "placement.json").read_text())
        big = next(h for h, blob in placement["blobs"].items() if blob["size"] > 800_000)
        cid = placement["blobs"][big]["cid"]
        flip.mode = "flip-cat"  # X now answers `cat` with a flipped bit
        token, token_hash = new_key(shardgate_bin, "release", "token", cwd=tmp_path)
        config = gateway_config(tmp_path, key_pub, rel.dir, [y.api], [flip.url, y.api], [], token_hash)
        y.lose(cid)
        with serve_listeners(shardgate_bin, config, usage_api=True) as (base, api, _):
            # X still pins every blob, but the block sample (one chunk read back and verified
            # against the chunk table) finds its bytes damaged: its copies are not healthy.
            sampled = wait_for("a failed block sample on X", lambda: next(
                (n for n in status(shardgate_bin, api, token, "damaged@1.0.0")["nodes"]
                 if n["node"] == flip.url and n["sample_failed"]), None))
            assert "damaged" in sampled["sample"] and sampled["holds"] == 4, sampled
            assert failed_samples(base) >= 1
            # A re-add cannot mend a damaged block the node keeps: it is tried once per file,
            # not every round (the task runs every second).
            time.sleep(5)
            tries = [r for r in status(shardgate_bin, api, token, "damaged@1.0.0")["repairs"]
                     if r["node"] == flip.url]
            readds = [r for r in tries if "re-added" in r["why"]]
            assert tries and not any(r["ok"] for r in tries), tries
            assert len(readds) <= 2, [r["why"] for r in tries]
            assert failed_samples(base) >= 4
            failed = wait_for("a failed repair", lambda: next(
                (r for r in status(shardgate_bin, api, token, "damaged@1.0.0")["repairs"]
                 if r["node"] == y.api and not r["ok"]), None))
            assert "damaged, not used" in failed["why"] and failed["source"] == "", failed
            assert not y.pinned(cid), "damaged bytes were pinned again"
            s = status(shardgate_bin, api, token, "damaged@1.0.0")
            assert s["under_replicated"] >= 1
            # The damage stops: the next round repairs from X.
            flip.mode = "pass"
            fixed = wait_for("a repair once X serves good bytes", lambda: next(
                (r for r in status(shardgate_bin, api, token, "damaged@1.0.0")["repairs"]
                 if r["node"] == y.api and r["ok"]), None))
            assert fixed["source"] == flip.url
            assert y.pinned(cid)
            # X's samples verify again.
            wait_for("a good block sample on X", lambda: next(
                (n for n in status(shardgate_bin, api, token, "damaged@1.0.0")["nodes"]
                 if n["node"] == flip.url and "verified" in n["sample"] and not n["sample_failed"]), None))
            assert wait_for("no blob under-replicated", lambda: status(
                shardgate_bin, api, token, "damaged@1.0.0")["under_replicated"] == 0)
    finally:
        flip.close()
        x.stop()
        y.stop()
