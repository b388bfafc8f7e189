"""A fleet: three gateways behind HAProxy with the shipped conf/fleet/haproxy.cfg.

A member is stopped (SIGTERM) in the middle of 200 whole-file reads through the
balancer: its /readyz goes unready at once, HAProxy takes it out, the reads it
was serving finish, and no read is lost or wrong. The members are then started
again on their ledgers, and the usage merged from all three by
`shardgate usage totals/export` with one --api per member equals, to the byte,
what the clients received. Each member lists all three as `reports.peers`, so
the finance summary and the dashboard (in headless Chromium) of any member show
the fleet's total and each member; a member that is down is marked, and left
out of the totals, never silently dropped."""
import concurrent.futures
import contextlib
import decimal
import html.parser
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


def member_config(root, i, releases, key_hash, token_hash, port, peers, finance_hash, peer_token):
    data = releases["data"]
    lines = ['[server]', f'listen = "127.0.0.1:{port}"', 'drain_delay = "3s"',
             '[trust]', f'keys = ["{releases["key_pub"]}"]',
             '[[releases]]', f'manifest = "{data.dir / "manifest.json"}"',
             '[[origins]]', 'kind = "dir"', f'path = "{data.dir}"',
             '[hot_tier]', 'capacity = "64MiB"',
             '[[tenants]]', 'id = "trainer"', f'keys = ["{key_hash}"]', f'datasets = ["{data.name}"]',
             '[usage]', f'ledger = "usage-{i}/usage.redb"', 'commit_interval = "1s"',
             f'pricing = "{REPO_ROOT / "conf/pricing.toml"}"',
             '[grpc]', 'listen = "127.0.0.1:0"', f'billing_tokens = ["{token_hash}"]',
             '[reports]', f'finance_tokens = ["{finance_hash}"]', f'peer_token_file = "{peer_token}"',
             'peer_timeout = "3s"', 'peers = [' + ", ".join(f'"{p}"' for p in peers) + ']']
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
    finance, finance_hash = new_key(shardgate_bin, "usage", "token", "--finance", cwd=tmp_path)
    peer_token = tmp_path / "finance.token"
    peer_token.write_text(finance + "\n")
    peer_token.chmod(0o600)
    ports = [free_port() for _ in range(3)]
    peers = [f"http://127.0.0.1:{p}" for p in ports]
    configs = [member_config(tmp_path, i, releases, key_hash, token_hash, ports[i], peers, finance_hash, peer_token)
               for i in range(3)]
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
        started = [stack.enter_context(serve_listeners(shardgate_bin, c, usage_api=True)) for c in configs]
        assert [m[0] for m in started] == peers
        apis = [f"http://{m[1]}" for m in started]
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

        # The finance summary of any member covers the fleet: the same bytes as the books.
        own = [summary(p, finance, scope="member") for p in peers]
        assert sum(s["served"]["bytes"] for s in own) == received
        fleet = summary(peers[1], finance)
        check_fleet(fleet, own, counted=[0, 1, 2], first=1)
        assert fleet["served"]["bytes"] == received, fleet["served"]
        assert sum(t["bytes"] for t in fleet["tenants"] if t["tenant"] == "trainer") == received
        assert sum(d["hot_bytes"] + d["origin_bytes"] for d in fleet["trend"]) == received
        assert requests.get(f"{peers[0]}/v1/reports/summary?scope=everything", timeout=10,
                            headers={"Authorization": f"Bearer {finance}"}).status_code == 400
        # The page shows the fleet total and every member, in a real browser.
        dom, figs, body = dashboard(peers[1], finance, tmp_path / "chrome-1")
        assert body.get("data-fleet-complete") == "true" and body.get("data-members") == "3", body
        assert figs["served.bytes"][0] == str(received), figs.get("served.bytes")
        for i, s in enumerate([own[1], own[0], own[2]]):  # this gateway first, then the peers in order
            assert figs[f"fleet.members.{i}.status"][0] == "ok"
            assert figs[f"fleet.members.{i}.served.bytes"][0] == str(s["served"]["bytes"]), i
        assert 'id="fleet-alert"' in dom and 'role="alert" hidden' in dom, "an alert shows with every member counted"

        # One member goes down: the others mark it, with why, and leave it out of the totals.
        down = started[2][0]
        SERVING[down].send_signal(signal.SIGTERM)
        assert SERVING[down].wait(timeout=30) == 0
        fleet = summary(peers[0], finance)
        check_fleet(fleet, own, counted=[0, 1], first=0)
        gone = fleet["fleet"]["members"][2]
        assert gone["status"] == "unreachable" and gone["url"] == peers[2], gone
        assert "no answer" in gone["error"], gone
        assert fleet["served"]["bytes"] == received - own[2]["served"]["bytes"]
        dom, figs, body = dashboard(peers[0], finance, tmp_path / "chrome-0")
        assert body.get("data-fleet-complete") == "false" and body.get("data-counted") == "2", body
        assert figs["fleet.members.2.status"][0] == "unreachable"
        assert figs["fleet.members.2.status"][1] == "unreachable"
        assert figs["fleet.members.2.error"][1].startswith("Not counted: no answer"), figs["fleet.members.2.error"]
        alert = re.search(r'(<div id="fleet-alert"[^>]*>)(.*?)</div>', dom, re.S)
        assert alert and "hidden" not in alert.group(1), "the page does not warn of the missing member"
        assert f"leave out 1 of 3 members: {peers[2]}" in alert.group(2), alert.group(2)
        assert figs["served.bytes"][0] == str(received - own[2]["served"]["bytes"])
        shot = dashboard(peers[0], finance, tmp_path / "chrome-shot", screenshot=tmp_path / "fleet-dashboard.png")
        assert shot.startswith(b"\x89PNG") and len(shot) > 20_000, len(shot)


def summary(base, token, scope=None):
    q = "days=30" + (f"&scope={scope}" if scope else "")
    r = requests.get(f"{base}/v1/reports/summary?{q}", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def check_fleet(fleet, own, counted, first):
    """`fleet` (asked of member `first`) counts exactly the members `counted` of `own` (their own summaries)."""
    members = fleet["fleet"]["members"]
    assert len(members) == 3, members
    assert members[0]["url"] is not None, "the member that listed itself among its peers is named by its URL"
    order = [first] + [i for i in range(3) if i != first]
    for m, i in zip(members, order):
        if i in counted:
            assert m["status"] == "ok", m
            assert m["instance"] == own[i]["gateway_instance"], (m, i)
            assert m["served"]["bytes"] == own[i]["served"]["bytes"], (m, i)
    assert fleet["fleet"]["complete"] == (len(counted) == 3)
    assert fleet["served"]["bytes"] == sum(own[i]["served"]["bytes"] for i in counted)
    assert fleet["served"]["requests"] == sum(own[i]["served"]["requests"] for i in counted)
    assert fleet["fleet"]["warnings"] == [], fleet["fleet"]["warnings"]
    # Money is the sum of the members' rounded figures, so their rows add up to the total exactly.
    billed = sum(decimal.Decimal(own[i]["btt"]["billed"]["btt"]) for i in counted)
    assert decimal.Decimal(fleet["btt"]["billed"]["btt"]) == billed > 0, (fleet["btt"], billed)
    assert sum(decimal.Decimal(t["charge"]["btt"]) for t in fleet["tenants"]) == billed
    spent = sum(decimal.Decimal(own[i]["btt"]["retrieval_spent"]["btt"]) for i in counted)
    assert decimal.Decimal(fleet["btt"]["retrieval_spent"]["btt"]) == spent
    # Storage is paid once for the fleet: the catalog is not summed.
    assert fleet["btt"]["committed"] == own[0]["btt"]["committed"]
    assert fleet["stored"] == own[0]["stored"]


class _Figures(html.parser.HTMLParser):
    """Every element with data-field: field -> (data-raw, text); and the body's attributes."""

    def __init__(self):
        super().__init__()
        self.figs, self.body, self._open = {}, {}, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        if "data-field" in a:
            self._open.append([a["data-field"], a.get("data-raw", ""), ""])

    def handle_data(self, data):
        for f in self._open:
            f[2] += data

    def handle_endtag(self, tag):
        if self._open and tag in ("td", "span", "p"):
            field, raw, text = self._open.pop()
            self.figs[field] = (raw, text)


def dashboard(base, token, profile, screenshot=None):
    """The dashboard of `base`, rendered by headless Chromium: (DOM, figures, body attributes), or
    with `screenshot`, the PNG saved there (for people)."""
    chrome = next((c for c in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.path.exists(c)), None)
    if chrome is None:
        pytest.fail("chromium is not installed (conf/test.sh installs Debian's chromium)")
    out = subprocess.run([chrome, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          "--no-first-run", "--disable-background-networking", "--disable-component-update",
                          "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=20000",
                          *(["--window-size=1280,1800", f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]),
                          f"{base}/dashboard#token={token}&days=30"],
                         capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    assert out.returncode == 0, out.stderr[-2000:]
    if screenshot:
        return screenshot.read_bytes()
    dom = out.stdout
    p = _Figures()
    p.feed(dom)
    assert p.body.get("data-state") == "ready", dom[-3000:]
    return dom, p.figs, p.body


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


def test_prewarm_via_the_balancer_warms_each_file_on_the_member_that_serves_it(releases, shardgate_bin, tmp_path):
    data = releases["data"]
    paths = sorted(p for p in data.sources if data.sources[p])
    admin, admin_hash = new_key(shardgate_bin, "release", "token", cwd=tmp_path)
    extra = ('[grpc]', 'listen = "127.0.0.1:0"', f'admin_tokens = ["{admin_hash}"]')
    release = f"{data.name}@{data.version}"

    def prewarm(lb, *args, token=admin):
        return subprocess.run([shardgate_bin, "release", "prewarm", release, "--via", lb, *args], capture_output=True,
                              text=True, timeout=CMD_TIMEOUT_S, env={**os.environ, "SHARDGATE_ADMIN_TOKEN": token})

    with contextlib.ExitStack() as stack:
        bases = [stack.enter_context(serve(shardgate_bin, _config(
            tmp_path / f"member-{i}.toml", releases["key_pub"], [data.dir / "manifest.json"],
            [{"kind": "dir", "path": data.dir}], extra))) for i in range(3)]
        lb = stack.enter_context(haproxy(bases, tmp_path / "haproxy.log"))
        # Each member's instance id, from the plan it answers an operator with.
        instance = {}
        for b in bases:
            r = requests.post(f"{b}/v1/datasets/{data.name}/{data.version}/manifest", timeout=10,
                              headers={"Authorization": f"Bearer {admin}"})
            assert r.status_code == 200, r.text
            instance[r.json()["instance"]] = b
        assert len(instance) == 3

        out = prewarm(lb)
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert report["failed"] == [] and report["version"] == data.version, report
        warmed = {f: m["instance"] for m in report["members"] for f in m["files"]}
        assert sorted(warmed) == sorted(data.sources), "every file warmed once"
        assert len(report["members"]) >= 2, f"the balancer sent every file to one member: {report}"
        for m in report["members"]:
            # All cold on a fresh fleet, but an empty file's one chunk, which needs no origin.
            empty = sum(1 for f in m["files"] if not data.sources[f])
            assert m["chunks_fetched"] == m["chunks"] - empty > 0, m
            # The member that says it warmed the files fetched them from the origin.
            fetched = origin_bytes(instance[m["instance"]])
            assert fetched >= sum(len(data.sources[f]) for f in m["files"]), (m, fetched)
        assert f"on {len(report['members'])} members" in out.stderr, out.stderr
        for m in report["members"]:
            assert m["instance"] in out.stderr

        # Every read through the balancer is now served hot, by the member that warmed it.
        before = [origin_bytes(b) for b in bases]
        for p in paths:
            r = requests.get(f"{lb}/v1/datasets/{data.name}/{data.version}/files/{p}", timeout=60)
            assert r.status_code == 200 and r.content == data.sources[p], p
            assert r.headers.get("x-shardgate-cache") == "hit", (p, r.headers.get("x-shardgate-cache"))
            # The member the report names holds it hot.
            direct = requests.get(f"{instance[warmed[p]]}/v1/datasets/{data.name}/{data.version}/files/{p}",
                                  timeout=60)
            assert direct.status_code == 200 and direct.headers.get("x-shardgate-cache") == "hit", p
        assert [origin_bytes(b) for b in bases] == before, "a read after the pre-warm went to the origin"

        # Again: nothing left to fetch, and the same members.
        out = prewarm(lb, "--file", paths[0])
        assert out.returncode == 0, out.stderr
        again = json.loads(out.stdout)
        assert again["members"][0]["files"] == [paths[0]] and again["members"][0]["chunks_fetched"] == 0, again
        assert again["members"][0]["instance"] == warmed[paths[0]]

        # Refusals name the problem: a token that is not an admin token; a file not in the release.
        bad = prewarm(lb, token="not-an-admin-token")
        assert bad.returncode != 0 and "401" in bad.stderr and "admin token" in bad.stderr, bad.stderr
        missing = prewarm(lb, "--file", "no/such.bin")
        assert missing.returncode != 0 and '"no/such.bin"' in missing.stderr, missing.stderr
        # Reads are not operators' work: a GET still goes to the tenant door, a POST needs the admin token.
        r = requests.post(f"{lb}/v1/datasets/{data.name}/{data.version}/files/{paths[0]}", timeout=10)
        assert r.status_code == 401, r.text
