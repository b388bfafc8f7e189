"""Per-tenant metering end to end, with real clients and a grpcio billing client.

Several tenants read through the gateway: curl, fsspec (aiohttp), a reader
that hangs up mid-body with a reset, and curl giving up mid-body. The gateway
is stopped (SIGTERM flushes the ledger and closes every window) and started
again on the same ledger; then a grpcio client with stubs generated from
proto/ by grpcio-tools reads ListUsage and GetTotals, and the bytes billed to
each tenant are compared with the bytes its clients received.
"""
import re
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import CHUNK_SIZE, MIB, curl, serve_with_usage

REPO = Path(__file__).resolve().parents[3]
SERVICE = "shardgate.usage.v1.UsageService"


@pytest.fixture(scope="module")
def pb():
    """usage_pb2 and usage_pb2_grpc, generated from proto/ now by grpcio-tools."""
    import grpc_tools
    from grpc_tools import protoc

    out = Path(subprocess.run(["mktemp", "-d"], capture_output=True, text=True, check=True).stdout.strip())
    include = Path(grpc_tools.__file__).parent / "_proto"
    rc = protoc.main(["protoc", f"-I{REPO / 'proto'}", f"-I{include}", f"--python_out={out}",
                      f"--grpc_python_out={out}", str(REPO / "proto/shardgate/usage/v1/usage.proto")])
    assert rc == 0, "grpcio-tools could not compile proto/shardgate/usage/v1/usage.proto"
    sys.path.insert(0, str(out))
    pkg = sys.modules.get("shardgate")
    if pkg is not None and hasattr(pkg, "__path__"):
        # The Python client (clients/python) is the `shardgate` package too, imported
        # already: the generated `shardgate.usage.v1` joins its package path.
        pkg.__path__.append(str(out / "shardgate"))
    from shardgate.usage.v1 import usage_pb2, usage_pb2_grpc
    return usage_pb2, usage_pb2_grpc


def new_key(bin_path: str, *cmd: str, cwd: Path) -> tuple:
    """A key or token from the CLI: (secret, its `blake3:` hash for config)."""
    out = subprocess.run([bin_path, *cmd], cwd=cwd, capture_output=True, text=True, timeout=30, check=True)
    secret = out.stdout.strip()
    m = re.search(r'"(blake3:[0-9a-f]{64})"', out.stderr)
    assert secret and m, out.stderr
    return secret, m.group(1)


@dataclass
class Billing:
    keys: dict
    token: str
    config: Path
    received: dict = field(default_factory=dict)  # tenant -> bytes its clients received
    requests: dict = field(default_factory=dict)  # tenant -> responses
    api: str = ""


def read_then_reset(base: str, path: str, key: str, want: int) -> int:
    """GET on a raw socket; read the head and `want` body bytes, then reset the connection."""
    host, port = base.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        piece = s.recv(65536)
        assert piece, "closed before the head"
        buf += piece
    head, _, body = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    got = len(body)
    while got < want:
        piece = s.recv(min(65536, want - got))
        assert piece
        got += len(piece)
    s.close()
    return got


def fsspec_reads(base: str, rel, key: str) -> int:
    """Reads with fsspec's HTTP filesystem; returns the body bytes aiohttp received."""
    import aiohttp
    from fsspec.implementations.http import HTTPFileSystem

    counted = {"bytes": 0}

    async def on_chunk(session, ctx, params):
        counted["bytes"] += len(params.chunk)

    trace = aiohttp.TraceConfig()
    trace.on_response_chunk_received.append(on_chunk)
    fs = HTTPFileSystem(skip_instance_cache=True, block_size=MIB,
                        client_kwargs={"trace_configs": [trace],
                                       "headers": {"Authorization": f"Bearer {key}"}})
    url = lambda p: f"{base}/v1/datasets/{rel.name}/{rel.version}/files/{p}"  # noqa: E731
    assert fs.cat_file(url("records.jsonl")) == rel.sources["records.jsonl"]
    assert fs.cat_file(url("blobs/mid.bin"), start=100, end=5000) == rel.sources["blobs/mid.bin"][100:5000]
    with fs.open(url("blobs/big.bin"), "rb") as f:
        f.seek(2 * MIB)
        assert f.read(100_000) == rel.sources["blobs/big.bin"][2 * MIB:2 * MIB + 100_000]
    assert fs.info(url("table.parquet"))["size"] == len(rel.sources["table.parquet"])
    return counted["bytes"]


@pytest.fixture(scope="module")
def billing(releases, shardgate_bin, pb):
    root = releases["root"]
    data, wds = releases["data"], releases["wds"]
    keys, hashes = {}, {}
    for t in ("vision", "text", "quitter", "curlquit"):
        keys[t], hashes[t] = new_key(shardgate_bin, "tenant", "key", "--tenant", t, cwd=root)
    token, token_hash = new_key(shardgate_bin, "usage", "token", cwd=root)
    lines = ['[server]', 'listen = "127.0.0.1:0"', '[trust]', f'keys = ["{releases["key_pub"]}"]',
             '[[releases]]', f'manifest = "{data.dir / "manifest.json"}"',
             '[[releases]]', f'manifest = "{wds.dir / "manifest.json"}"',
             '[[origins]]', 'kind = "dir"', f'path = "{data.dir}"',
             '[[origins]]', 'kind = "dir"', f'path = "{wds.dir}"',
             '[hot_tier]', 'capacity = "64MiB"']
    for t in ("vision", "text", "quitter", "curlquit"):
        lines += ['[[tenants]]', f'id = "{t}"', f'keys = ["{hashes[t]}"]', 'datasets = ["clients"]']
        if t in ("quitter", "curlquit"):
            # Four chunks at once, then one chunk a second: a reader can stop at a known point.
            lines += ['bandwidth = "256KiB"', 'bandwidth_burst = "1MiB"']
    lines += ['[access]', f'public_datasets = ["{wds.name}"]',
              '[usage]', 'ledger = "usage-state/usage.redb"', 'commit_interval = "1s"',
              '[grpc]', 'listen = "127.0.0.1:0"', f'billing_tokens = ["{token_hash}"]']
    config = root / "billing-gateway.toml"
    config.write_text("\n".join(lines) + "\n")
    b = Billing(keys=keys, token=token, config=config)

    with serve_with_usage(shardgate_bin, config, usage_api=True) as (base, _):
        tmp = root / "billing-tmp"
        tmp.mkdir(exist_ok=True)
        auth = lambda t: ["-H", f"Authorization: Bearer {keys[t]}"]  # noqa: E731
        url = lambda rel, p: f"{base}/v1/datasets/{rel.name}/{rel.version}/files/{p}"  # noqa: E731

        # vision: curl, whole files, ranges, HEAD.
        got = 0
        for args, path, status in [([], "blobs/big.bin", 200), (["-r", "0-999"], "blobs/mid.bin", 206),
                                   (["-r", "-5000"], "table.parquet", 206), (["-I"], "records.jsonl", 200),
                                   ([], "blobs/big.bin", 200)]:
            r = curl(url(data, path), *auth("vision"), *args, tmp=tmp)
            assert r.status == status, (path, r.status)
            # With -I, curl writes the response head to its output file: a HEAD has no body.
            got += 0 if "-I" in args else len(r.body)
        b.received["vision"], b.requests["vision"] = got, 5

        # text: fsspec, counted by aiohttp as it receives.
        b.received["text"] = fsspec_reads(base, data, keys["text"])

        # anonymous: a public dataset without a key.
        shard = wds.manifest["files"][0]["path"]
        r = curl(url(wds, shard), tmp=tmp)
        assert r.status == 200
        b.received["anonymous"], b.requests["anonymous"] = len(r.body), 1

        # quitter: reads the four chunks its bandwidth burst lets out, then resets.
        path = f"/v1/datasets/{data.name}/{data.version}/files/blobs/big.bin"
        b.received["quitter"] = read_then_reset(base, path, keys["quitter"], 4 * CHUNK_SIZE)
        b.requests["quitter"] = 1

        # curlquit: curl gives up after 2.5 s of a slow body.
        body = tmp / "quit.body"
        out = subprocess.run(["curl", "-sS", "--max-time", "2.5", "-o", str(body), *auth("curlquit"),
                              url(data, "blobs/big.bin")], capture_output=True, text=True, timeout=30)
        assert out.returncode == 28, f"curl should time out mid-body: {out.returncode} {out.stderr}"
        b.received["curlquit"], b.requests["curlquit"] = body.stat().st_size, 1
        assert 0 < b.received["curlquit"] < len(data.sources["blobs/big.bin"])
        # The gateway learns of a hang-up when it next writes: within a chunk's time at 256 KiB/s.
        time.sleep(2.5)
    # Stopped with SIGTERM: the ledger is flushed and every window closed. Start again on it.
    with serve_with_usage(shardgate_bin, config, usage_api=True) as (_, api):
        b.api = api
        yield b


def channel(b: Billing):
    import grpc

    return grpc.insecure_channel(b.api)


def meta(token: str):
    return [("authorization", f"Bearer {token}")]


def all_records(b: Billing, pb, limit=3, tenant=None):
    usage_pb2, usage_pb2_grpc = pb
    stub = usage_pb2_grpc.UsageServiceStub(channel(b))
    out, cursor = [], ""
    for _ in range(10_000):
        req = usage_pb2.ListUsageRequest(after_cursor=cursor, limit=limit)
        if tenant:
            req.tenant = tenant
        page = stub.ListUsage(req, metadata=meta(b.token), timeout=10)
        out += page.records
        if not page.records:
            break
        assert page.next_cursor == page.records[-1].cursor
        cursor = page.next_cursor
    return out


def billed(records, tenant):
    total = {"bytes": 0, "requests": 0, "aborted": 0}
    for r in records:
        if r.WhichOneof("counters") == "tenant_usage" and r.tenant_usage.tenant == tenant:
            total["bytes"] += r.tenant_usage.bytes
            total["requests"] += r.tenant_usage.requests
            total["aborted"] += r.tenant_usage.aborted_requests
    return total


@pytest.mark.parametrize("tenant", ["vision", "text", "anonymous", "quitter"])
def test_billed_bytes_equal_bytes_received(billing, pb, tenant):
    records = all_records(billing, pb)
    got = billed(records, tenant)
    assert got["bytes"] == billing.received[tenant], (tenant, got, billing.received[tenant])
    if tenant in billing.requests:
        assert got["requests"] == billing.requests[tenant]
    assert got["aborted"] == (1 if tenant == "quitter" else 0)


def test_a_client_that_gives_up_is_billed_what_was_sent(billing, pb):
    """curl closes cleanly (FIN) when it gives up; the gateway's next chunk may
    still be taken by the kernel before the peer's reset arrives, so the bill
    may exceed what curl read by at most that one chunk, never by the rest of
    the file."""
    got = billed(all_records(billing, pb), "curlquit")
    received = billing.received["curlquit"]
    assert got["requests"] == 1 and got["aborted"] == 1
    assert received <= got["bytes"] <= received + CHUNK_SIZE, (got, received)


def test_get_totals_agrees_with_list_usage(billing, pb):
    usage_pb2, usage_pb2_grpc = pb
    stub = usage_pb2_grpc.UsageServiceStub(channel(billing))
    records = all_records(billing, pb, limit=1000)
    for tenant in ("vision", "text", "anonymous", "quitter", "curlquit"):
        t = stub.GetTotals(usage_pb2.GetTotalsRequest(tenant=tenant), metadata=meta(billing.token), timeout=10)
        want = billed(records, tenant)
        assert (t.bytes, t.requests, t.aborted_requests) == (want["bytes"], want["requests"], want["aborted"])
        assert sum(s.bytes for s in t.by_source) == t.bytes
    # A dataset filter that matches nothing.
    t = stub.GetTotals(usage_pb2.GetTotalsRequest(tenant="vision", dataset="nope"), metadata=meta(billing.token))
    assert t.bytes == 0


def test_get_chargeback_agrees_with_get_totals_to_the_byte(billing, pb):
    usage_pb2, usage_pb2_grpc = pb
    stub = usage_pb2_grpc.UsageServiceStub(channel(billing))
    cb = stub.GetChargeback(usage_pb2.GetChargebackRequest(), metadata=meta(billing.token), timeout=10)
    HOT, ORIGIN = usage_pb2.SOURCE_HOT, usage_pb2.SOURCE_ORIGIN
    tenants = {line.tenant for line in cb.lines}
    assert {"vision", "text"} <= tenants, tenants
    for tenant in tenants:
        t = stub.GetTotals(usage_pb2.GetTotalsRequest(tenant=tenant, to=cb.to), metadata=meta(billing.token))
        by = {s.source: s.bytes for s in t.by_source}
        lines = [line for line in cb.lines if line.tenant == tenant]
        assert sum(line.hot_bytes for line in lines) == by.get(HOT, 0), tenant
        assert sum(line.origin_bytes for line in lines) == by.get(ORIGIN, 0), tenant
        assert sum(line.bytes for line in lines) == t.bytes
        assert sum(line.requests for line in lines) == t.requests
    # This gateway has no pricing: bytes only, no money.
    assert not cb.HasField("pricing")
    assert all(not line.HasField("charge") for line in cb.lines)
    egress = sum(r.origin_egress_bytes for r in cb.releases)
    assert egress > 0
    e = None
    try:
        stub.GetChargeback(usage_pb2.GetChargebackRequest(), timeout=10)
    except Exception as err:  # grpc.RpcError
        e = err
    assert e is not None and "UNAUTHENTICATED" in str(e.code())


def test_reading_the_same_cursor_twice_gives_the_same_ids(billing, pb):
    first = all_records(billing, pb, limit=2)
    again = all_records(billing, pb, limit=1000)
    assert [r.id for r in first] == [r.id for r in again]
    assert len({r.id for r in first}) == len(first)
    assert all(r.window_end - r.window_start == 60 for r in first)
    assert len({r.gateway_instance for r in first}) == 1
    # Tenant filter: only that tenant's records, dataset costs left out.
    only = all_records(billing, pb, tenant="vision")
    assert only and all(r.tenant_usage.tenant == "vision" for r in only)
    # The release's own costs: origin egress covers at least what came from origins.
    costs = [r.dataset_cost for r in first if r.WhichOneof("counters") == "dataset_cost"]
    assert sum(c.origin_egress_bytes for c in costs) > 0
    assert sum(c.integrity_failed_bytes for c in costs) == 0


def test_wrong_or_missing_billing_token_is_unauthenticated(billing, pb):
    import grpc

    usage_pb2, usage_pb2_grpc = pb
    stub = usage_pb2_grpc.UsageServiceStub(channel(billing))
    for md in (None, meta("sgk_not-a-token"), meta(billing.keys["vision"]), [("authorization", "Basic x")]):
        with pytest.raises(grpc.RpcError) as e:
            stub.ListUsage(usage_pb2.ListUsageRequest(), metadata=md, timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, md
    with pytest.raises(grpc.RpcError) as e:
        stub.ListUsage(usage_pb2.ListUsageRequest(after_cursor="not-a-cursor"), metadata=meta(billing.token))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_health_and_reflection(billing):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    health = health_pb2_grpc.HealthStub(channel(billing))
    for service in ("", SERVICE):
        r = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert r.status == health_pb2.HealthCheckResponse.SERVING, service
    db = ProtoReflectionDescriptorDatabase(channel(billing))
    services = db.get_services()
    assert SERVICE in services and "grpc.health.v1.Health" in services, services
    desc = db.FindFileContainingSymbol(SERVICE)
    assert desc.package == "shardgate.usage.v1"
    assert [m.name for m in desc.service[0].method] == [
        "ListUsage", "StreamUsage", "GetTotals", "GetChargeback", "AckUsage"]


def test_stream_usage_resumes_from_a_cursor(billing, pb):
    usage_pb2, usage_pb2_grpc = pb
    stub = usage_pb2_grpc.UsageServiceStub(channel(billing))
    records = all_records(billing, pb, limit=1000)
    mid = records[len(records) // 2]
    stream = stub.StreamUsage(usage_pb2.StreamUsageRequest(after_cursor=mid.cursor), metadata=meta(billing.token),
                              timeout=5)
    got = []
    for r in stream:
        got.append(r)
        if len(got) == len(records) - len(records) // 2 - 1:
            stream.cancel()
            break
    assert [r.id for r in got] == [r.id for r in records[len(records) // 2 + 1:]]


def test_usage_cli_reads_the_api(billing, shardgate_bin):
    import json

    env = {"SHARDGATE_BILLING_TOKEN": billing.token, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([shardgate_bin, "usage", "totals", "--api", f"http://{billing.api}", "--tenant", "vision"],
                         capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["bytes"] == billing.received["vision"]
    out = subprocess.run([shardgate_bin, "usage", "list", "--api", f"http://{billing.api}"],
                         capture_output=True, text=True, timeout=30, env={**env, "SHARDGATE_BILLING_TOKEN": "bad"})
    assert out.returncode != 0 and "Unauthenticated" in out.stderr, out.stderr
