"""A fleet: three gateways behind HAProxy with the shipped conf/fleet/haproxy.cfg.

A member is stopped (SIGTERM) in the middle of 200 whole-file reads through the
balancer: its /readyz goes unready at once, HAProxy takes it out, the reads it
was serving finish, and no read is lost or wrong. The members are then started
again on their ledgers, and the usage merged from all three by
`shardgate usage totals/export` with one --api per member equals, to the byte,
what the clients received."""
import concurrent.futures
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time

import pytest
import requests

from conftest import CMD_TIMEOUT_S, REPO_ROOT, SERVING, START_TIMEOUT_S, _config, free_port, haproxy, serve, \
    serve_listeners, wait_ready
from test_usage import new_key

READS = 200
STOP_AT = 60  # the read after which one member is stopped


def member_config(root, i, releases, key_hash, token_hash):
    data = releases["data"]
    lines = ['[server]', 'listen = "127.0.0.1:0"', 'drain_delay = "3s"',
             '[trust]', f'keys = ["{releases["key_pub"]}"]',
             '[[releases]]', f'manifest = "{data.dir / "manifest.json"}"',
             '[[origins]]', 'kind = "dir"', f'path = "{data.dir}"',
             '[hot_tier]', 'capacity = "64MiB"',
             '[[tenants]]', 'id = "trainer"', f'keys = ["{key_hash}"]', f'datasets = ["{data.name}"]',
             '[usage]', f'ledger = "usage-{i}/usage.redb"', 'commit_interval = "1s"',
             '[grpc]', 'listen = "127.0.0.1:0"', f'billing_tokens = ["{token_hash}"]']
    path = root / f"fleet-member-{i}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def file_requests(base):
    text = requests.get(f"{base}/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(r'^shardgate_http_requests_total\{[^}]*route="file"[^}]*\} (\S+)$',
                                             text, re.M))


def sg(bin_path, *args, token):
    out = subprocess.run([bin_path, *args], capture_output=True, text=True, timeout=CMD_TIMEOUT_S,
                         env={**os.environ, "SHARDGATE_BILLING_TOKEN": token})
    assert out.returncode == 0, out.stderr
    return out


def test_a_member_stopped_mid_run_loses_no_read_and_usage_merges_to_the_byte(releases, shardgate_bin, tmp_path):
    data = releases["data"]
    key, key_hash = new_key(shardgate_bin, "tenant", "key", "--tenant", "trainer", cwd=tmp_path)
    token, token_hash = new_key(shardgate_bin, "usage", "token", cwd=tmp_path)
    configs = [member_config(tmp_path, i, releases, key_hash, token_hash) for i in range(3)]
    paths = [p for p in data.sources if data.sources[p]]
    rng = random.Random(23)
    plan = [rng.choice(paths) for _ in range(READS)]

    received = 0
    outcomes = []
    lock = threading.Lock()
    done = {"n": 0}
    with contextlib.ExitStack() as stack:
        members = [stack.enter_context(serve_listeners(shardgate_bin, c, usage_api=True)) for c in configs]
        bases = [m[0] for m in members]
        lb = stack.enter_context(haproxy(bases, tmp_path / "haproxy.log"))
        stopped = {}
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {key}"

        def read(path):
            r = session.get(f"{lb}/v1/datasets/{data.name}/{data.version}/files/{path}", timeout=60)
            body = r.content
            with lock:
                done["n"] += 1
                if done["n"] == STOP_AT:
                    # The member serving the most files so far (the balancer hashes paths).
                    busiest = max(bases, key=file_requests)
                    stopped["base"] = busiest
                    SERVING[busiest].send_signal(signal.SIGTERM)
            return path, r.status_code, body

        with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
            for path, status, body in pool.map(read, plan):
                outcomes.append((path, status, len(body)))
                assert status == 200, (path, status, body[:200])
                assert body == data.sources[path], f"{path}: {len(body)} bytes, wrong or cut"
                received += len(body)
        assert len(outcomes) == READS
        # Every series the shipped recording rules read is one the members export.
        exposed = requests.get(f"{bases[0]}/metrics", timeout=10).text
        names = set(re.findall(r"^(shardgate_[a-z_]+?)(?:_bucket|_count|_sum)?[{ ]", exposed, re.M))
        rules = (REPO_ROOT / "conf/fleet/shardgate.rules.yml").read_text()
        # Series read by the expressions (recorded names, level:metric:ops, are not exported).
        used = {re.sub(r"_bucket$", "", u) for u in re.findall(r"(?<![:\w])shardgate_\w+", rules)}
        assert used <= names, f"the rules read series no member exports: {sorted(used - names)}"
        # The stopped member exited cleanly while the run went on.
        assert SERVING[stopped["base"]].wait(timeout=30) == 0
        # Its /readyz had gone unready: HAProxy saw it down.
        name = f"g{bases.index(stopped['base']) + 1}"
        log = (tmp_path / "haproxy.log").read_text()
        assert f"Server gateways/{name} is DOWN" in log, log[-2000:]

    # Every member flushed its ledger on SIGTERM. Start them again and read the books.
    with contextlib.ExitStack() as stack:
        apis = [f"http://{stack.enter_context(serve_listeners(shardgate_bin, c, usage_api=True))[1]}"
                for c in configs]
        args = [a for api in apis for a in ("--api", api)]
        totals = json.loads(sg(shardgate_bin, "usage", "totals", "--tenant", "trainer", *args, token=token).stdout)
        assert totals["bytes"] == received, (totals, received)
        assert totals["requests"] == READS, totals
        assert len(totals["gateways"]) == 3, totals
        # The stopped member served reads before it stopped, and they are in the books.
        assert totals["gateways"][bases.index(stopped["base"])]["records"] > 0, totals
        # A member given twice is counted once.
        twice = json.loads(sg(shardgate_bin, "usage", "totals", "--tenant", "trainer", *args, "--api", apis[0],
                              token=token).stdout)
        assert twice["bytes"] == received, twice
        # The fleet's chargeback: one line per release, the members' bytes summed.
        out = sg(shardgate_bin, "usage", "export", "--format", "json", "--from", "0", *args, "--api", apis[2],
                 token=token)
        export = json.loads(out.stdout)
        assert sum(line["bytes"] for line in export["lines"] if line["tenant"] == "trainer") == received, export
        assert len(export["gateway_instance"].split("+")) == 3, export["gateway_instance"]
        assert "counted once" in out.stderr, out.stderr


def promtool(*args):
    if not shutil.which("promtool"):
        pytest.fail("promtool is not installed (conf/test.sh installs Debian's prometheus package)")
    out = subprocess.run(["promtool", *args], cwd=REPO_ROOT / "conf/fleet", capture_output=True, text=True,
                         timeout=CMD_TIMEOUT_S)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_the_shipped_prometheus_configuration_and_rules_check_and_compute_fleet_figures():
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")
    assert "SUCCESS" in promtool("check", "rules", "shardgate.rules.yml")
    # The rules' arithmetic on synthetic members: fleet hit ratio, bytes by tenant,
    # p99 from summed buckets, ejected origins, and the member-down alert.
    assert "SUCCESS" in promtool("test", "rules", "shardgate.rules.test.yml")


@contextlib.contextmanager
def nginx_lb(members, root):
    """nginx with the shipped conf/fleet/nginx-shardgate.conf, the members on its server lines."""
    if not shutil.which("nginx"):
        pytest.fail("nginx is not installed (conf/test.sh installs nginx-light)")
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    text = (REPO_ROOT / "conf/fleet/nginx-shardgate.conf").read_text()
    servers = iter(members)
    text, n = re.subn(r"server 10\.0\.0\.1\d:8080", lambda _: f"server {next(servers).removeprefix('http://')}", text)
    assert n == 3, "conf/fleet/nginx-shardgate.conf lists three members"
    text = text.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    (root / "shardgate.conf").write_text(text)
    (root / "nginx.conf").write_text(f"""
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {root}; proxy_temp_path {root}; fastcgi_temp_path {root};
  uwsgi_temp_path {root}; scgi_temp_path {root};
  include {root}/shardgate.conf;
}}
""")
    proc = subprocess.Popen(["nginx", "-p", str(root), "-c", str(root / "nginx.conf"), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_ready(base, proc, time.monotonic() + START_TIMEOUT_S):
            pytest.fail(f"nginx did not come up: {(root / 'error.log').read_text()[-2000:]}")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def origin_bytes(base):
    text = requests.get(f"{base}/metrics", timeout=10).text
    return sum(int(float(v)) for v in re.findall(r"^shardgate_origin_fetched_bytes_total(?:\{[^}]*\})? (\S+)$",
                                                 text, re.M))


@pytest.mark.parametrize("balancer", ["haproxy", "nginx"])
def test_consistent_hashing_fetches_each_file_from_the_origin_once_fleet_wide(releases, shardgate_bin, tmp_path,
                                                                              balancer):
    data = releases["data"]
    paths = sorted(p for p in data.sources if data.sources[p])

    def config(name):
        return _config(tmp_path / f"{name}.toml", releases["key_pub"], [data.dir / "manifest.json"],
                       [{"kind": "dir", "path": data.dir}])

    def read_all(base, times):
        for _ in range(times):
            for p in paths:
                r = requests.get(f"{base}/v1/datasets/{data.name}/{data.version}/files/{p}", timeout=60)
                assert r.status_code == 200 and r.content == data.sources[p], (p, r.status_code)

    # One gateway reading every file once: what the origin must serve for the dataset.
    with serve(shardgate_bin, config("single")) as single:
        read_all(single, 1)
        once = origin_bytes(single)
    assert once >= sum(len(data.sources[p]) for p in paths)
    with contextlib.ExitStack() as stack:
        bases = [stack.enter_context(serve(shardgate_bin, config(f"member-{i}"))) for i in range(3)]
        if balancer == "haproxy":
            lb = stack.enter_context(haproxy(bases, tmp_path / "haproxy.log"))
        else:
            lb = stack.enter_context(nginx_lb(bases, tmp_path / "nginx"))
        read_all(lb, 3)
        fleet = [origin_bytes(b) for b in bases]
    # Each file lives on one member: three passes through the balancer cost the
    # origin what one pass cost a single gateway (round robin would pay up to 3x).
    assert sum(fleet) == once, (fleet, once)
    assert sum(1 for b in fleet if b) >= 2, f"the balancer sent every file to one member: {fleet}"
