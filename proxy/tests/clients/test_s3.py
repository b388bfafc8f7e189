"""The read-only S3 API, driven by the clients that only speak S3: boto3, s3fs,
pyarrow's S3FileSystem, Polars, Lance and the AWS CLI, against the real
binary over a dir origin and over the dev node.

Bucket = dataset, key = `<version or tag>/<path>`. Path-style requests go to
`/s3` on the gateway's listener; clients that cannot take an endpoint with a
path (pyarrow, Polars, Lance) use the S3 listener of its own (`s3.listen`)."""
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import CMD_TIMEOUT_S, _config, _pack, b3sum, curl, run, serve_listeners

MANY = 3000  # files in the `many` release: three pages of 1,000, more than 2,500


@dataclass
class S3Gateway:
    kind: str
    base: str       # http://127.0.0.1:PORT (the gateway; S3 under /s3)
    s3root: str     # http://127.0.0.1:PORT (S3 at the root of its own listener)
    alice: tuple    # (access key id, secret): reads clients, many, lancedata
    bob: tuple      # reads clientswds only
    releases: dict  # name -> conftest.Release
    many: bool      # whether the `many` release is served

    @property
    def endpoint(self) -> str:
        return f"{self.base}/s3"


def _make_many(src: Path) -> None:
    for i in range(MANY):
        d = src / f"d{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        # A space and a plus in some names: keys must survive URL encoding.
        name = f"f {i:05d}+x.txt" if i % 500 == 0 else f"f{i:05d}.txt"
        (d / name).write_text(f"file {i}\n")


def _make_lance(src: Path):
    import lance
    import pyarrow as pa

    rng = random.Random(5)
    table = pa.table({
        "id": pa.array(range(5000), type=pa.int64()),
        "score": pa.array([rng.random() for _ in range(5000)], type=pa.float64()),
        "name": pa.array([f"row-{i}" for i in range(5000)]),
    })
    lance.write_dataset(table, str(src / "ds.lance"), max_rows_per_file=2000)
    return table


@pytest.fixture(scope="module")
def s3_releases(releases, shardgate_bin):
    root = releases["root"]
    out = {"clients": releases["data"], "clientswds": releases["wds"]}
    if not (root / "many").exists():
        _make_many(root / "many")
        _make_lance(root / "lancesrc")
    out["many"] = _pack(shardgate_bin, root, "many", "many")
    out["lancedata"] = _pack(shardgate_bin, root, "lancesrc", "lancedata")
    import lance
    out["lance_table"] = lance.dataset(str(root / "lancesrc" / "ds.lance")).to_table()
    return out


def _credentials(bin_path: str, root: Path, creds: Path, tenant: str) -> tuple:
    out = run(bin_path, "tenant", "s3-key", "--tenant", tenant, "--credentials", str(creds), cwd=root)
    kv = dict(line.split(" = ", 1) for line in out.strip().splitlines())
    return kv["aws_access_key_id"], kv["aws_secret_access_key"]


def _s3_config(path: Path, key_pub: Path, manifests: list, origins: list, creds: Path) -> Path:
    return _config(path, key_pub, manifests, origins, extra=(
        '[[tenants]]', 'id = "alice"', 'datasets = ["clients", "many", "lancedata"]',
        '[[tenants]]', 'id = "bob"', 'datasets = ["clientswds"]',
        '[access]', 'public_datasets = ["clients"]',
        '[s3]', 'listen = "127.0.0.1:0"', 'domains = ["s3.test"]', f'credentials = "{creds}"'))


@pytest.fixture(scope="module", params=["dir", "btfs-api"])
def s3gw(request, s3_releases, releases, shardgate_bin, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"s3-{request.param}")
    creds = root / "s3-credentials.toml"
    alice = _credentials(shardgate_bin, root, creds, "alice")
    bob = _credentials(shardgate_bin, root, creds, "bob")
    assert creds.stat().st_mode & 0o777 == 0o600
    rels = {k: v for k, v in s3_releases.items() if k != "lance_table"}
    if request.param == "dir":
        manifests = [r.dir / "manifest.json" for r in rels.values()]
        origins = [{"kind": "dir", "path": r.dir} for r in rels.values()]
        many = True
    else:
        # The node serves every byte: the gateway keeps only manifests and placements.
        # (`many`, 3,000 small files, stays on the dir gateway: publishing it adds nothing here.)
        api = os.environ.get("DEV_NODE_API")
        prefix = os.environ.get("DEV_NODE_API_PREFIX", "/api/v0")
        if not api:
            pytest.fail("DEV_NODE_API is not set: run conf/test.sh")
        del rels["many"]
        manifests = []
        for rel in rels.values():
            dst = root / rel.dir.name
            shutil.copytree(rel.dir, dst)
            run(shardgate_bin, "publish", str(dst), "--node", api, "--api-prefix", prefix, cwd=root)
            shutil.rmtree(dst / "files")
            shutil.rmtree(dst / "tables", ignore_errors=True)
            manifests.append(dst / "manifest.json")
        origins = [{"kind": "btfs-api", "url": api, "api_prefix": prefix}]
        many = False
    config = _s3_config(root / "gateway.toml", releases["key_pub"], manifests, origins, creds)
    with serve_listeners(shardgate_bin, config, s3_api=True) as (base, _, s3root):
        yield S3Gateway(request.param, base, s3root, alice, bob, rels, many)


def client(gw: S3Gateway, who: str = "alice", endpoint: str | None = None, **config):
    import boto3
    from botocore.config import Config

    kwargs = {"region_name": "us-east-1", "endpoint_url": endpoint or gw.endpoint,
              "config": Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}, **config)}
    if who == "anon":
        from botocore import UNSIGNED
        kwargs["config"] = kwargs["config"].merge(Config(signature_version=UNSIGNED))
    else:
        key, secret = getattr(gw, who) if isinstance(who, str) else who
        kwargs.update(aws_access_key_id=key, aws_secret_access_key=secret)
    return boto3.client("s3", **kwargs)


def error_code(excinfo) -> str:
    return excinfo.value.response["Error"]["Code"]


# --------------------------------------------------------------------------- boto3


def test_boto3_head_and_ranged_gets(s3gw: S3Gateway):
    s3 = client(s3gw)
    rel = s3gw.releases["clients"]
    created = rel.manifest["created_at"]
    for path in ("blobs/big.bin", "blobs/mid.bin", "one.bin", "table.parquet"):
        src = rel.sources[path]
        head = s3.head_object(Bucket="clients", Key=f"1.0.0/{path}")
        assert head["ContentLength"] == len(src)
        assert head["ETag"] == f'"{rel.entry(path)["blake3"]}"'
        assert head["AcceptRanges"] == "bytes"
        # Last-Modified is the release's time (whole seconds), the same on every gateway.
        assert head["LastModified"].strftime("%Y-%m-%dT%H:%M:%S") == created[:19]
        whole = s3.get_object(Bucket="clients", Key=f"1.0.0/{path}")
        assert whole["Body"].read() == src
        n = len(src)
        for rng, want in ((f"bytes=0-{min(n, 1000) - 1}", src[:1000]),
                          (f"bytes={n // 2}-", src[n // 2:]),
                          ("bytes=-1", src[-1:]),
                          (f"bytes=-{n + 100}", src)):
            r = s3.get_object(Bucket="clients", Key=f"1.0.0/{path}", Range=rng)
            assert r["ResponseMetadata"]["HTTPStatusCode"] == 206, rng
            assert r["ContentRange"].endswith(f"/{n}")
            assert r["Body"].read() == want, (path, rng)
    # Unsatisfiable and multiple ranges are InvalidRange (416) with an S3 body.
    from botocore.exceptions import ClientError
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="clients", Key="1.0.0/one.bin", Range="bytes=5-9")
    assert error_code(e) == "InvalidRange"
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="clients", Key="1.0.0/blobs/mid.bin", Range="bytes=0-1,5-9")
    assert error_code(e) == "InvalidRange"


def test_boto3_conditionals(s3gw: S3Gateway):
    import datetime

    from botocore.exceptions import ClientError
    s3 = client(s3gw)
    key = "1.0.0/blobs/mid.bin"
    etag = s3.head_object(Bucket="clients", Key=key)["ETag"]
    src = s3gw.releases["clients"].sources["blobs/mid.bin"]
    # s3fs and s3transfer send If-Match with HEAD's ETag on ranged GETs.
    r = s3.get_object(Bucket="clients", Key=key, IfMatch=etag, Range="bytes=10-19")
    assert r["Body"].read() == src[10:20]
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="clients", Key=key, IfMatch='"0000"')
    assert error_code(e) == "PreconditionFailed"
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="clients", Key=key, IfNoneMatch=etag)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
    past = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="clients", Key=key, IfModifiedSince=future)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    assert s3.get_object(Bucket="clients", Key=key, IfModifiedSince=past)["Body"].read() == src
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="clients", Key=key, IfUnmodifiedSince=past)
    assert error_code(e) == "PreconditionFailed"
    assert s3.get_object(Bucket="clients", Key=key, IfUnmodifiedSince=future)["Body"].read() == src


def test_boto3_list_paginator_over_3000_files(s3gw: S3Gateway):
    if not s3gw.many:
        pytest.skip("the many-files release is served by the dir gateway")
    rel = s3gw.releases["many"]
    want = sorted(f"1.0.0/{f['path']}" for f in rel.manifest["files"])
    assert len(want) == MANY
    s3 = client(s3gw)
    pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket="many", Prefix="1.0.0/"))
    keys = [o["Key"] for p in pages for o in p.get("Contents", [])]
    assert keys == want  # every key once, in order, names with spaces and '+' intact
    assert [p["KeyCount"] for p in pages] == [1000, 1000, 1000]
    tokens = [p.get("NextContinuationToken") for p in pages]
    assert all(tokens[:-1]) and tokens[-1] is None and len(set(tokens[:-1])) == 2
    assert [p["IsTruncated"] for p in pages] == [True, True, False]
    sizes = {f"1.0.0/{f['path']}": f["size"] for f in rel.manifest["files"]}
    for p in pages:
        for o in p["Contents"]:
            assert o["Size"] == sizes[o["Key"]]
    # Smaller pages, start-after, and v1 with markers agree.
    small = [o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(
        Bucket="many", PaginationConfig={"PageSize": 700}) for o in p.get("Contents", [])]
    assert small == want
    after = s3.list_objects_v2(Bucket="many", StartAfter=want[2500])
    assert [o["Key"] for o in after["Contents"]] == want[2501:]
    v1 = [o["Key"] for p in s3.get_paginator("list_objects").paginate(Bucket="many")
          for o in p.get("Contents", [])]
    assert v1 == want
    # Delimiter: versions at the root, directories below.
    top = s3.list_objects_v2(Bucket="many", Delimiter="/")
    assert [c["Prefix"] for c in top["CommonPrefixes"]] == ["1.0.0/"] and "Contents" not in top
    dirs = s3.list_objects_v2(Bucket="many", Prefix="1.0.0/", Delimiter="/", FetchOwner=True)
    assert [c["Prefix"] for c in dirs["CommonPrefixes"]] == [f"1.0.0/d{i}/" for i in range(7)]
    zero = s3.list_objects_v2(Bucket="many", MaxKeys=0)
    assert zero["KeyCount"] == 0 and zero["IsTruncated"] is False
    one = s3.list_objects_v2(Bucket="many", Prefix="1.0.0/d3/", Delimiter="/", MaxKeys=5)
    assert [o["Key"] for o in one["Contents"]] == [k for k in want if k.startswith("1.0.0/d3/")][:5]
    assert one["IsTruncated"]


def test_boto3_buckets_and_location(s3gw: S3Gateway):
    s3 = client(s3gw)
    names = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert {"clients", "lancedata"} <= names and "clientswds" not in names
    s3.head_bucket(Bucket="clients")
    assert s3.get_bucket_location(Bucket="clients").get("LocationConstraint") in (None, "")
    assert {b["Name"] for b in client(s3gw, "bob").list_buckets()["Buckets"]} == {"clientswds", "clients"}


def test_boto3_refusals(s3gw: S3Gateway):
    from botocore.exceptions import ClientError
    key, _ = s3gw.alice
    with pytest.raises(ClientError) as e:
        client(s3gw, (key, "not-the-secret-at-all-0000")).get_object(Bucket="clients", Key="1.0.0/one.bin")
    assert error_code(e) == "SignatureDoesNotMatch"
    with pytest.raises(ClientError) as e:
        client(s3gw, ("SGAKNOSUCHKEY000", "x" * 40)).get_object(Bucket="clients", Key="1.0.0/one.bin")
    assert error_code(e) == "InvalidAccessKeyId"
    # A tenant reading another's dataset, and an unsigned read of a private one.
    with pytest.raises(ClientError) as e:
        client(s3gw).get_object(Bucket="clientswds", Key=f"1.0.0/{s3gw.releases['clientswds'].manifest['files'][0]['path']}")
    assert error_code(e) == "AccessDenied"
    with pytest.raises(ClientError) as e:
        client(s3gw, "anon").list_objects_v2(Bucket="lancedata")
    assert error_code(e) == "AccessDenied"
    with pytest.raises(ClientError) as e:
        client(s3gw).get_object(Bucket="clients", Key="1.0.0/nope.bin")
    assert error_code(e) == "NoSuchKey"
    with pytest.raises(ClientError) as e:
        client(s3gw).get_object(Bucket="clients", Key="9.9.9/one.bin")
    assert error_code(e) == "NoSuchKey"
    with pytest.raises(ClientError) as e:
        client(s3gw, "anon").list_objects_v2(Bucket="clients", MaxKeys=1, ContinuationToken="!!")
    assert error_code(e) == "InvalidArgument"
    # Read-only: writes are refused and nothing changes.
    with pytest.raises(ClientError) as e:
        client(s3gw).put_object(Bucket="clients", Key="1.0.0/one.bin", Body=b"x")
    assert error_code(e) == "MethodNotAllowed"
    with pytest.raises(ClientError) as e:
        client(s3gw).delete_object(Bucket="clients", Key="1.0.0/one.bin")
    assert error_code(e) == "MethodNotAllowed"
    assert client(s3gw).get_object(Bucket="clients", Key="1.0.0/one.bin")["Body"].read() == b"\x5a"


def test_unknown_bucket_is_nosuchbucket(s3gw: S3Gateway, tmp_path):
    # No tenant may read it and it is not public: a signed reader is refused,
    # and an unsigned curl gets S3 XML, never JSON or a redirect.
    r = curl(f"{s3gw.endpoint}/clients/1.0.0/absent", tmp=tmp_path)
    assert r.status == 404 and b"<Code>NoSuchKey</Code>" in r.body
    assert r.headers["content-type"] == "application/xml"


def test_unsigned_public_reads(s3gw: S3Gateway):
    s3 = client(s3gw, "anon")
    src = s3gw.releases["clients"].sources["records.jsonl"]
    assert s3.get_object(Bucket="clients", Key="1.0.0/records.jsonl")["Body"].read() == src


def test_presigned_url_with_curl(s3gw: S3Gateway, tmp_path):
    # botocore presigns with SigV2 unless told otherwise; SigV2 is refused by name.
    r = curl(client(s3gw, signature_version="s3").generate_presigned_url(
        "get_object", Params={"Bucket": "clients", "Key": "1.0.0/one.bin"}), tmp=tmp_path)
    assert r.status == 400 and b"s3v4" in r.body
    s3 = client(s3gw, signature_version="s3v4")
    src = s3gw.releases["clients"].sources["blobs/big.bin"]
    url = s3.generate_presigned_url("get_object", Params={
        "Bucket": "clients", "Key": "1.0.0/blobs/big.bin",
        "ResponseContentType": "application/x-test", "ResponseContentDisposition": "attachment; filename=b.bin"},
        ExpiresIn=300)
    r = curl(url, tmp=tmp_path)
    assert r.status == 200 and r.body == src
    assert r.headers["content-type"] == "application/x-test"
    assert r.headers["content-disposition"] == "attachment; filename=b.bin"
    r = curl(url, "-r", "100-199", tmp=tmp_path)
    assert r.status == 206 and r.body == src[100:200]
    # A type a browser would run stays opaque and an attachment, whatever the URL asks.
    url = s3.generate_presigned_url("get_object", Params={
        "Bucket": "clients", "Key": "1.0.0/one.bin", "ResponseContentType": "text/html",
        "ResponseContentDisposition": "inline"}, ExpiresIn=300)
    r = curl(url, tmp=tmp_path)
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"] == "attachment"
    # As in S3, an anonymous request may not override response headers.
    r = curl(f"{s3gw.endpoint}/clients/1.0.0/one.bin?response-cache-control=public", tmp=tmp_path)
    assert r.status == 400 and b"<Code>InvalidRequest</Code>" in r.body
    # A changed signature, and an expired URL, are refused.
    bad = url[:-4] + ("0000" if not url.endswith("0000") else "1111")
    r = curl(bad, tmp=tmp_path)
    assert r.status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in r.body
    short = s3.generate_presigned_url("get_object", Params={"Bucket": "clients", "Key": "1.0.0/one.bin"},
                                      ExpiresIn=1)
    time.sleep(2.2)
    r = curl(short, tmp=tmp_path)
    assert r.status == 403 and b"expired" in r.body


def test_virtual_hosted_addressing(s3gw: S3Gateway):
    """`clients.s3.test`: the client sends its requests through the S3
    listener as an HTTP proxy, so the name needs no DNS; the Host header and
    the signature carry the bucket as a virtual-hosted client sends them."""
    port = s3gw.s3root.rsplit(":", 1)[1]
    import boto3
    from botocore.config import Config
    key, secret = s3gw.alice
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=f"http://s3.test:{port}",
                      aws_access_key_id=key, aws_secret_access_key=secret,
                      config=Config(s3={"addressing_style": "virtual"}, proxies={"http": s3gw.s3root},
                                    retries={"max_attempts": 1}))
    src = s3gw.releases["clients"].sources["blobs/mid.bin"]
    r = s3.get_object(Bucket="clients", Key="1.0.0/blobs/mid.bin", Range="bytes=7-1006")
    assert r["Body"].read() == src[7:1007]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="clients", Prefix="1.0.0/blobs/")["Contents"]]
    assert keys == ["1.0.0/blobs/big.bin", "1.0.0/blobs/mid.bin"]


# --------------------------------------------------------------------------- s3fs, pyarrow, Polars, Lance


def s3fs_fs(gw: S3Gateway, endpoint: str | None = None):
    import s3fs
    key, secret = gw.alice
    return s3fs.S3FileSystem(key=key, secret=secret, skip_instance_cache=True,
                             client_kwargs={"endpoint_url": endpoint or gw.endpoint, "region_name": "us-east-1"},
                             config_kwargs={"s3": {"addressing_style": "path"}})


def test_s3fs_ls_glob_cat_ranges_open_seek(s3gw: S3Gateway):
    fs = s3fs_fs(s3gw)
    rel = s3gw.releases["clients"]
    assert sorted(fs.ls("clients/1.0.0/blobs")) == ["clients/1.0.0/blobs/big.bin", "clients/1.0.0/blobs/mid.bin"]
    top = fs.ls("clients/1.0.0", detail=True)
    assert {e["name"] for e in top} == {"clients/1.0.0/" + p for p in
                                        ("blobs", "empty.bin", "one.bin", "records.jsonl", "table.parquet")}
    assert {e["name"]: e["type"] for e in top}["clients/1.0.0/blobs"] == "directory"
    assert sorted(fs.glob("clients/1.0.0/**/*.bin")) == sorted(
        f"clients/1.0.0/{p}" for p in rel.sources if p.endswith(".bin"))
    big = rel.sources["blobs/big.bin"]
    starts = [0, 1000, 262_143, 2_000_000, len(big) - 10]
    ends = [10, 300_000, 262_145, 2_600_000, len(big)]
    got = fs.cat_ranges(["clients/1.0.0/blobs/big.bin"] * len(starts), starts, ends)
    assert got == [big[s:e] for s, e in zip(starts, ends)]
    with fs.open("clients/1.0.0/blobs/big.bin", "rb", block_size=256 * 1024) as f:
        f.seek(1_234_567)
        assert f.read(100_000) == big[1_234_567:1_334_567]
        f.seek(-50, 2)
        assert f.read() == big[-50:]
    assert fs.cat("clients/1.0.0/empty.bin") == b""
    assert fs.info("clients/1.0.0/table.parquet")["size"] == len(rel.sources["table.parquet"])


def test_pyarrow_s3filesystem_reads_one_column(s3gw: S3Gateway, releases):
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq
    key, secret = s3gw.alice
    fs = pafs.S3FileSystem(access_key=key, secret_key=secret, region="us-east-1", scheme="http",
                           endpoint_override=s3gw.s3root.removeprefix("http://"))
    table = pq.read_table("clients/1.0.0/table.parquet", filesystem=fs, columns=["label"])
    local = pq.read_table(releases["data"].src / "table.parquet", columns=["label"])
    assert table.num_rows == 60_000 and table.equals(local)
    info = fs.get_file_info("clients/1.0.0/table.parquet")
    assert info.size == len(s3gw.releases["clients"].sources["table.parquet"])


def test_polars_scan_parquet(s3gw: S3Gateway, releases):
    import polars as pl
    key, secret = s3gw.alice
    opts = {"aws_endpoint_url": s3gw.s3root, "aws_access_key_id": key, "aws_secret_access_key": secret,
            "aws_region": "us-east-1", "aws_allow_http": "true"}
    got = (pl.scan_parquet("s3://clients/1.0.0/table.parquet", storage_options=opts)
           .filter(pl.col("flag")).select(["id", "x"]).collect())
    local = pl.read_parquet(releases["data"].src / "table.parquet").filter(pl.col("flag")).select(["id", "x"])
    assert got.height > 20_000 and got.equals(local)


def test_lance_dataset_with_filter(s3gw: S3Gateway, s3_releases):
    import lance
    key, secret = s3gw.alice
    ds = lance.dataset("s3://lancedata/1.0.0/ds.lance", storage_options={
        "endpoint": s3gw.s3root, "aws_access_key_id": key, "aws_secret_access_key": secret,
        "region": "us-east-1", "allow_http": "true"})
    got = ds.to_table(filter="id >= 1234 AND id < 1300", columns=["id", "score", "name"])
    want = s3_releases["lance_table"].slice(1234, 66)
    assert got.num_rows == 66 and got.sort_by("id").equals(want)
    assert ds.count_rows() == 5000


# --------------------------------------------------------------------------- AWS CLI


def test_aws_cli_ls_and_cp(s3gw: S3Gateway, tmp_path):
    aws = Path(sys.executable).parent / "aws"
    key, secret = s3gw.alice
    env = {**os.environ, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": "/dev/null",
           "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}

    def cli(*args):
        out = subprocess.run([str(aws), "--endpoint-url", s3gw.endpoint, *args], env=env,
                             capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
        assert out.returncode == 0, f"aws {args}: {out.stderr}"
        return out.stdout

    listing = cli("s3", "ls", "s3://clients/1.0.0/blobs/")
    assert "big.bin" in listing and "mid.bin" in listing
    assert str(len(s3gw.releases["clients"].sources["blobs/big.bin"])) in listing
    cli("s3", "cp", "s3://clients/1.0.0/blobs/big.bin", str(tmp_path / "big.bin"))
    assert b3sum(tmp_path / "big.bin") == s3gw.releases["clients"].entry("blobs/big.bin")["blake3"]
    cli("s3", "cp", "--recursive", "s3://clients/1.0.0/", str(tmp_path / "all"))
    for path, blob in s3gw.releases["clients"].sources.items():
        assert (tmp_path / "all" / path).read_bytes() == blob, path
