"""Unit tests of the client's pieces that need no server: settings, manifest checks, the chunk cache."""
import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shardgate import ConfigError, ManifestError, _native
from shardgate.client import ChunkCache
from shardgate.config import Config
from shardgate.manifest import canonical, verify_manifest

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUB = KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
PUB_TEXT = "ed25519:" + base64.b64encode(PUB).decode()


def signed(doc: dict) -> bytes:
    body = {k: v for k, v in doc.items() if k not in ("signature", "approvals")}
    sig = KEY.sign(canonical(body, pretty=False))
    doc = {**doc, "signature": {"algorithm": "ed25519", "public_key": PUB_TEXT, "value": base64.b64encode(sig).decode()}}
    return canonical(doc, pretty=True)


def manifest(**over) -> dict:
    doc = {
        "schema": "shardgate.manifest/v1", "name": "ds", "version": "1.0.0", "parent": None,
        "created_at": "2026-01-01T00:00:00Z", "total_bytes": 5, "envelope": {},
        "files": [{"path": "a/b.bin", "size": 5, "media_type": "application/octet-stream", "blake3": "ab" * 32,
                   "chunk_size": 1024, "chunk_table": None}],
    }
    doc.update(over)
    return doc


def test_settings_errors_name_the_setting():
    with pytest.raises(ConfigError, match="endpoints"):
        Config.load({"trust": [PUB_TEXT]}, env={})
    with pytest.raises(ConfigError, match="trust"):
        Config.load({"endpoints": ["http://x"]}, env={})
    with pytest.raises(ConfigError, match="unknown setting.*endpiont"):
        Config.load({"endpiont": 1, "endpoints": ["http://x"], "trust": [PUB_TEXT]}, env={})
    with pytest.raises(ConfigError, match="not an http"):
        Config.load({"endpoints": ["ftp://x"], "trust": [PUB_TEXT]}, env={})
    with pytest.raises(ConfigError, match="deadline"):
        Config.load({"endpoints": ["http://x"], "trust": [PUB_TEXT], "deadline": 0}, env={})
    with pytest.raises(ConfigError, match="32-byte"):
        Config.load({"endpoints": ["http://x"], "trust": ["ed25519:AAAA"]}, env={})


def test_settings_come_from_options_over_environment_over_file(tmp_path):
    f = tmp_path / "client.toml"
    f.write_text(f'endpoints = ["http://file:1"]\ntrust = ["{PUB_TEXT}"]\ndeadline = 7\napi_key = "from-file"\n')
    env = {"SHARDGATE_CLIENT_CONFIG": str(f), "SHARDGATE_ENDPOINTS": "http://env:1, ipfs+http://env:2"}
    c = Config.load({"api_key": "opt"}, env=env)
    assert [e.label for e in c.endpoints] == ["http://env:1", "ipfs:http://env:2/ipfs"]
    assert (c.deadline, c.api_key, c.trust) == (7.0, "opt", (PUB,))
    with pytest.raises(ConfigError, match="client config"):
        Config.load({}, env={"SHARDGATE_CLIENT_CONFIG": str(tmp_path / "missing.toml")})


def test_a_manifest_is_checked_before_it_is_used():
    data = signed(manifest())
    rel = verify_manifest(data, (PUB,), "ds", "1.0.0")
    assert rel.paths == ["a/b.bin"] and rel.under("a") == ["a/b.bin"] and rel.under("b") == []
    with pytest.raises(ManifestError, match="not a trusted key"):
        verify_manifest(data, (b"\x01" * 32,), "ds", "1.0.0")
    with pytest.raises(ManifestError, match="not ds@2.0.0"):
        verify_manifest(data, (PUB,), "ds", "2.0.0")
    with pytest.raises(ManifestError, match="dataset 'ds', not 'other'"):
        verify_manifest(data, (PUB,), "other", None)
    # One byte changed after signing: the signature no longer verifies.
    tampered = data.replace(b'"size": 5', b'"size": 6').replace(b'"total_bytes": 5', b'"total_bytes": 6')
    with pytest.raises(ManifestError, match="changed after signing"):
        verify_manifest(tampered, (PUB,), "ds", "1.0.0")
    # Whitespace is not free: a manifest must be in canonical form.
    with pytest.raises(ManifestError, match="canonical"):
        verify_manifest(data.replace(b"\n  ", b"\n   ", 1), (PUB,), "ds", "1.0.0")
    with pytest.raises(ManifestError, match="total_bytes"):
        verify_manifest(signed(manifest(total_bytes=9)), (PUB,), "ds", "1.0.0")
    two = manifest(files=manifest()["files"] * 2, total_bytes=10)
    with pytest.raises(ManifestError, match="out of order or repeated"):
        verify_manifest(signed(two), (PUB,), "ds", "1.0.0")
    with pytest.raises(ManifestError, match="not valid JSON"):
        verify_manifest(b"{", (PUB,), "ds", None)


def test_a_chunk_table_that_does_not_prove_is_refused():
    with pytest.raises(ValueError, match="chunk table hash"):
        _native.ChunkTable.open(b"junk", "00" * 32, 4096, 1024, "00" * 32)
    with pytest.raises(ValueError, match="not a BLAKE3 hash"):
        _native.ChunkTable.open(b"junk", "zz", 4096, 1024, "00" * 32)


def test_the_chunk_cache_is_bounded_in_bytes():
    c = ChunkCache(10)
    c.put(("f", 4, 0), b"aaaa")
    c.put(("f", 4, 1), b"bbbb")
    assert c.get(("f", 4, 0)) == b"aaaa"  # now most recent
    c.put(("f", 4, 2), b"cccc")
    assert c.get(("f", 4, 1)) is None and c.size == 8
    c.put(("f", 4, 3), b"x" * 11)  # larger than the cache: not kept
    assert c.get(("f", 4, 3)) is None and json.dumps(c.size) == "8"


def test_manifest_spelling_and_paths_are_held_to_the_publishers_rules():
    data = signed(manifest())
    # Base64 with a different final character can decode to the same bytes: only the canonical spelling passes.
    doc = json.loads(data)
    v = doc["signature"]["value"]
    assert v.endswith("==")  # 64 bytes: the last character carries 4 unused bits
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    alt = v[:-3] + alphabet[alphabet.index(v[-3]) ^ 1] + "=="
    assert base64.b64decode(alt) == base64.b64decode(v)
    doc["signature"]["value"] = alt
    with pytest.raises(ManifestError, match="malformed"):
        verify_manifest(canonical(doc, pretty=True), (PUB,), "ds", "1.0.0")
    for bad in ("a\\b", "a\x00b", "a\x85b", "./a", "a//b"):
        f = {**manifest()["files"][0], "path": bad}
        with pytest.raises(ManifestError, match="not a release path"):
            verify_manifest(signed(manifest(files=[f])), (PUB,), "ds", "1.0.0")
    with pytest.raises(ManifestError, match="total_bytes"):
        verify_manifest(signed(manifest(total_bytes=True)), (PUB,), "ds", "1.0.0")
    empty = {**manifest()["files"][0], "size": 0}
    with pytest.raises(ManifestError, match="empty file"):
        verify_manifest(signed(manifest(files=[empty], total_bytes=0)), (PUB,), "ds", "1.0.0")


def test_nan_is_not_a_setting():
    with pytest.raises(ConfigError, match="deadline"):
        Config.load({"endpoints": ["http://x"], "trust": [PUB_TEXT], "deadline": float("nan")}, env={})
