"""The signed release manifest, checked as the gateway checks it: canonical
form, an ed25519 signature by a trusted publisher key, structure, and the
name and version asked for. Nothing in a manifest is used before that."""

from __future__ import annotations

import base64
import bisect
import json
import re
from dataclasses import dataclass, field
from typing import Any

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .errors import ManifestError

SCHEMAS = ("shardgate.manifest/v1", "shardgate.manifest/v2")
PLACEMENT_SCHEMA = "shardgate.placement/v1"
MIN_CHUNK, MAX_CHUNK = 1024, 64 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)


def is_version(segment: str) -> bool:
    """Whether a `@` segment is a semantic version (else it is a tag)."""
    return _SEMVER.fullmatch(segment) is not None


def b3hex(data: bytes) -> str:
    """BLAKE3 of `data`. One thread: the binding's thread pool does not survive fork()
    (DataLoader workers), and chunks are hashed in parallel on the client's own pool."""
    return blake3.blake3(data).hexdigest()


def strict_b64(text: object) -> bytes | None:
    """Standard padded base64 in its one canonical spelling, as the publisher writes it."""
    if not isinstance(text, str):
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    return raw if base64.b64encode(raw).decode() == text else None


_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
EMPTY_BLAKE3 = blake3.blake3(b"").hexdigest()


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    media_type: str
    blake3: str
    chunk_size: int
    chunk_table: str | None
    encrypted: bool

    @property
    def chunk_count(self) -> int:
        return max(1, -(-self.size // self.chunk_size))

    def chunk_range(self, index: int) -> tuple[int, int]:
        start = min(index * self.chunk_size, self.size)
        return start, min(start + self.chunk_size, self.size)


@dataclass
class Release:
    name: str
    version: str
    id: str
    signer: str
    created_at: str
    files: dict[str, FileEntry]
    paths: list[str]
    manifest_bytes: bytes
    # BLAKE3 hex -> CID, from the release's placement.json when one is known.
    cids: dict[str, str] = field(default_factory=dict)
    # The placement.json those CIDs came from, when a gateway supplied it.
    placement_bytes: bytes | None = None

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    def under(self, prefix: str) -> list[str]:
        """The sorted paths under directory `prefix` ("" for the root)."""
        if not prefix:
            return self.paths
        lo = bisect.bisect_left(self.paths, prefix + "/")
        hi = bisect.bisect_left(self.paths, prefix + "0")  # "0" follows "/"
        return self.paths[lo:hi]


def canonical(value: Any, pretty: bool) -> bytes:
    """Canonical JSON as the publisher writes it: sorted keys, compact or two-space pretty."""
    if pretty:
        return (json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def verify_manifest(data: bytes, trusted: tuple[bytes, ...], name: str, version: str | None) -> Release:
    """Parses and checks `manifest.json` bytes; raises ManifestError naming the first problem."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"manifest is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ManifestError("manifest is not a JSON object")
    try:
        again = canonical(doc, pretty=True)
    except ValueError as e:
        raise ManifestError(f"manifest holds a value outside canonical JSON: {e}") from None
    if again != data:
        offset = next((i for i, (a, b) in enumerate(zip(again, data)) if a != b), min(len(again), len(data)))
        raise ManifestError(f"manifest is not in canonical form (first difference at byte offset {offset})")
    if doc.get("schema") not in SCHEMAS:
        raise ManifestError(f"manifest schema {doc.get('schema')!r} is not one of {SCHEMAS}")
    sig = doc.get("signature")
    if not isinstance(sig, dict):
        raise ManifestError("manifest is not signed")
    if sig.get("algorithm") != "ed25519":
        raise ManifestError(f"manifest signature algorithm {sig.get('algorithm')!r} is not 'ed25519'")
    key_text = sig.get("public_key")
    key = strict_b64(key_text[len("ed25519:") :]) if isinstance(key_text, str) and key_text.startswith("ed25519:") else None
    value = strict_b64(sig.get("value"))
    if key is None or value is None or len(key) != 32 or len(value) != 64:
        raise ManifestError("manifest signature: public_key or value is malformed")
    signing = {k: v for k, v in doc.items() if k not in ("signature", "approvals")}
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(value, canonical(signing, pretty=False))
    except (InvalidSignature, ValueError):
        raise ManifestError(
            f"manifest signature does not verify against its public key {key_text}: it was changed after signing"
        ) from None
    if key not in trusted:
        raise ManifestError(f"manifest is signed by {key_text}, which is not a trusted key")
    if not isinstance(doc.get("name"), str) or not _NAME.fullmatch(doc["name"]):
        raise ManifestError(f"manifest field name: {doc.get('name')!r} is not a dataset name")
    if not isinstance(doc.get("version"), str) or not is_version(doc["version"]):
        raise ManifestError(f"manifest field version: {doc.get('version')!r} is not a semantic version")
    if doc.get("name") != name:
        raise ManifestError(f"manifest is for dataset {doc.get('name')!r}, not {name!r}")
    if version is not None and doc.get("version") != version:
        raise ManifestError(f"manifest is for {name}@{doc.get('version')}, not {name}@{version}")
    files, paths = _files(doc)
    return Release(
        name=name,
        version=str(doc["version"]),
        id=b3hex(data),
        signer=key_text,
        created_at=str(doc.get("created_at")),
        files=files,
        paths=paths,
        manifest_bytes=data,
    )


def _files(doc: dict) -> tuple[dict[str, FileEntry], list[str]]:
    def bad(i: int, key: str, why: str) -> ManifestError:
        return ManifestError(f"manifest field files[{i}].{key}: {why}")

    raw = doc.get("files")
    if not isinstance(raw, list):
        raise ManifestError("manifest field files: not a list")
    files: dict[str, FileEntry] = {}
    paths: list[str] = []
    total = 0
    for i, f in enumerate(raw):
        if not isinstance(f, dict):
            raise bad(i, "", "not an object")
        path = f.get("path")
        if (
            not isinstance(path, str)
            or not path
            or len(path.encode()) > 4096
            or any(c in ("", ".", "..") for c in path.split("/"))
            or any(ch == "\\" or ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in path)
        ):
            raise bad(i, "path", f"{path!r} is not a release path (normal `/`-separated components, no control characters)")
        if paths and paths[-1] >= path:
            raise bad(i, "path", f"{path!r} is out of order or repeated")
        size, cs = f.get("size"), f.get("chunk_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise bad(i, "size", f"{size!r} is not a size")
        if not isinstance(cs, int) or cs & (cs - 1) or not MIN_CHUNK <= cs <= MAX_CHUNK:
            raise bad(i, "chunk_size", f"{cs!r} is not a power of two between 1 KiB and 64 MiB")
        digest, table = f.get("blake3"), f.get("chunk_table")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise bad(i, "blake3", f"{digest!r} is not a BLAKE3 hash")
        if size == 0 and digest != EMPTY_BLAKE3:
            raise bad(i, "blake3", "an empty file's hash must be BLAKE3 of no bytes")
        multi = size > cs
        if multi != (table is not None) or (table is not None and not (isinstance(table, str) and _HEX64.fullmatch(table))):
            raise bad(i, "chunk_table", "must be a BLAKE3 hash exactly when the file has more than one chunk")
        entry = FileEntry(
            path=path,
            size=size,
            media_type=str(f.get("media_type", "application/octet-stream")),
            blake3=digest,
            chunk_size=cs,
            chunk_table=table,
            encrypted=f.get("encryption") is not None,
        )
        files[path] = entry
        paths.append(path)
        total += size
    declared = doc.get("total_bytes")
    if not isinstance(declared, int) or isinstance(declared, bool) or total != declared:
        raise ManifestError(f"manifest field total_bytes: {doc.get('total_bytes')!r} but files add up to {total}")
    return files, paths


def apply_placement(release: Release, data: bytes, source: str) -> None:
    """Takes the BLAKE3-to-CID map of a placement.json that belongs to `release`.

    A placement is not signed and need not be: every byte fetched by one of
    its CIDs is still checked against the signed manifest. A placement of
    another release is refused, naming it.
    """
    try:
        p = json.loads(data)
        assert isinstance(p, dict) and p.get("schema") == PLACEMENT_SCHEMA
    except (ValueError, AssertionError, UnicodeDecodeError):
        raise ManifestError(f"placement {source}: not a {PLACEMENT_SCHEMA} document") from None
    if p.get("name") != release.name or p.get("version") != release.version or p.get("manifest_blake3") != release.id:
        raise ManifestError(
            f"placement {source} is for {p.get('name')}@{p.get('version')} (release id {p.get('manifest_blake3')}), "
            f"not {release.label} (release id {release.id})"
        )
    blobs = p.get("blobs")
    if not isinstance(blobs, dict):
        raise ManifestError(f"placement {source}: blobs is not a map")
    cids = {h: b["cid"] for h, b in blobs.items() if isinstance(b, dict) and isinstance(b.get("cid"), str)}
    if isinstance(p.get("manifest_cid"), str):
        cids.setdefault(release.id, p["manifest_cid"])
    release.cids = cids


def placement_manifest_cid(data: bytes, name: str, version: str, source: str) -> tuple[str, str]:
    """(manifest CID, release id) from a placement.json, before the manifest is known."""
    try:
        p = json.loads(data)
        assert isinstance(p, dict) and p.get("schema") == PLACEMENT_SCHEMA
    except (ValueError, AssertionError, UnicodeDecodeError):
        raise ManifestError(f"placement {source}: not a {PLACEMENT_SCHEMA} document") from None
    if p.get("name") != name or p.get("version") != version:
        raise ManifestError(f"placement {source} is for {p.get('name')}@{p.get('version')}, not {name}@{version}")
    cid = p.get("manifest_cid")
    if not isinstance(cid, str):
        raise ManifestError(f"placement {source} has no manifest_cid (was the release published?)")
    return cid, str(p.get("manifest_blake3"))
