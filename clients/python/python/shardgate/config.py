"""Client settings, from `storage_options` (or keyword arguments), environment
variables and a small TOML file, in that order of precedence.

Keys (storage option / `SHARDGATE_*` variable / file key):

- ``endpoints``: list of endpoints, tried in order (see `policy`). A plain
  ``http(s)://host:port`` is a shardgate gateway; ``ipfs+http://host:port``
  and ``btfs+http://host:port`` are IPFS- or BTFS-style path gateways
  (``/ipfs/CID``, ``/btfs/CID``) reached through the release's placement.
  A mapping ``{"url": ..., "kind": "shardgate"|"ipfs", "path_prefix": "/ipfs"}``
  is accepted too. Variable: comma-separated.
- ``trust``: publisher keys (``ed25519:...`` or a path to a ``.pub`` file). Required.
- ``api_key``: bearer key, sent only to shardgate gateways.
- ``placements``: ``{"NAME@VERSION": path or URL of its placement.json}``.
- ``policy``: ``"ordered"`` (default) or ``"fastest"`` (by observed first-byte time).
- ``deadline`` (s, 120): the longest any one read may take, retries included.
- ``connect_timeout`` (s, 5), ``stall_timeout`` (s, 15): per request.
- ``attempts`` (3): rounds over every endpoint before a read fails.
- ``backoff`` (s, 0.2): first pause between rounds, doubled each round, jittered.
- ``cooldown`` (s, 30): how long a sick endpoint is set aside (doubling while it stays sick).
- ``cache_bytes`` (64 MiB): verified chunks kept for random reads.
- ``readahead_bytes`` (32 MiB): how far a sequential reader is prefetched.
- ``span_bytes`` (8 MiB): the most one request asks for.
- ``max_requests`` (8): requests in flight per filesystem.
- ``tag_ttl`` (s, 60): how long a tag's resolution is reused.

Environment: ``SHARDGATE_ENDPOINTS``, ``SHARDGATE_TRUST``, ``SHARDGATE_API_KEY``,
and ``SHARDGATE_CLIENT_CONFIG`` (the file; default ``~/.config/shardgate/client.toml``).
"""

from __future__ import annotations

import base64
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .errors import ConfigError

MIB = 1 << 20


@dataclass(frozen=True)
class EndpointSpec:
    url: str
    kind: str  # "shardgate" or "ipfs"
    path_prefix: str = ""

    @property
    def label(self) -> str:
        return self.url if self.kind == "shardgate" else f"{self.kind}:{self.url}{self.path_prefix}"


@dataclass(frozen=True)
class Config:
    endpoints: tuple[EndpointSpec, ...]
    trust: tuple[bytes, ...]
    api_key: str | None = None
    placements: Mapping[str, str] = field(default_factory=dict)
    policy: str = "ordered"
    deadline: float = 120.0
    connect_timeout: float = 5.0
    stall_timeout: float = 15.0
    attempts: int = 3
    backoff: float = 0.2
    cooldown: float = 30.0
    cache_bytes: int = 64 * MIB
    readahead_bytes: int = 32 * MIB
    span_bytes: int = 8 * MIB
    max_requests: int = 8
    tag_ttl: float = 60.0

    @classmethod
    def load(cls, options: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> "Config":
        """Builds the settings: `options` over the environment over the file."""
        env = os.environ if env is None else env
        merged: dict[str, Any] = {}
        path = env.get("SHARDGATE_CLIENT_CONFIG")
        file = Path(path) if path else Path.home() / ".config" / "shardgate" / "client.toml"
        if path or file.is_file():
            try:
                merged.update(tomllib.loads(file.read_text()))
            except (OSError, tomllib.TOMLDecodeError) as e:
                raise ConfigError(f"client config {file}: {e}") from None
        for key, var in (("endpoints", "SHARDGATE_ENDPOINTS"), ("trust", "SHARDGATE_TRUST")):
            if env.get(var):
                merged[key] = [v.strip() for v in env[var].split(",") if v.strip()]
        if env.get("SHARDGATE_API_KEY"):
            merged["api_key"] = env["SHARDGATE_API_KEY"]
        merged.update({k: v for k, v in (options or {}).items() if v is not None})
        return cls.from_mapping(merged)

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(m) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if not m.get("endpoints"):
            raise ConfigError("endpoints: no endpoint is configured (storage option, SHARDGATE_ENDPOINTS or the file)")
        if not m.get("trust"):
            raise ConfigError("trust: no trusted publisher key is configured (storage option, SHARDGATE_TRUST or the file)")
        eps = m["endpoints"]
        if isinstance(eps, (str, dict)):
            eps = [eps]
        trust = m["trust"]
        if isinstance(trust, str):
            trust = [trust]
        kw: dict[str, Any] = {
            "endpoints": tuple(parse_endpoint(e) for e in eps),
            "trust": tuple(load_key(k) for k in trust),
        }
        if m.get("api_key") is not None:
            if not isinstance(m["api_key"], str) or not m["api_key"]:
                raise ConfigError("api_key: must be a non-empty string")
            kw["api_key"] = m["api_key"]
        if m.get("placements") is not None:
            p = m["placements"]
            if not isinstance(p, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in p.items()):
                raise ConfigError('placements: must map "NAME@VERSION" to a path or URL')
            kw["placements"] = dict(p)
        if "policy" in m:
            if m["policy"] not in ("ordered", "fastest"):
                raise ConfigError(f'policy: {m["policy"]!r} is not "ordered" or "fastest"')
            kw["policy"] = m["policy"]
        for name in ("deadline", "connect_timeout", "stall_timeout", "backoff", "cooldown", "tag_ttl"):
            if name in m:
                kw[name] = _number(name, m[name], float, minimum=0.0, strict=name in ("deadline", "connect_timeout", "stall_timeout"))
        for name in ("attempts", "cache_bytes", "readahead_bytes", "span_bytes", "max_requests"):
            if name in m:
                kw[name] = _number(name, m[name], int, minimum=0 if name in ("cache_bytes", "readahead_bytes") else 1)
        return cls(**kw)


def _number(name: str, value: Any, kind: type, minimum: float, strict: bool = False):
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and not isinstance(value, int))
        or value != value  # NaN
    ):
        raise ConfigError(f"{name}: {value!r} is not {'an integer' if kind is int else 'a number'}")
    if value < minimum or (strict and value == 0):
        raise ConfigError(f"{name}: {value!r} is out of range (must be {'>' if strict else '>='} {minimum})")
    return kind(value)


def parse_endpoint(e: Any) -> EndpointSpec:
    if isinstance(e, Mapping):
        url, kind, prefix = e.get("url"), e.get("kind", "shardgate"), e.get("path_prefix")
        extra = set(e) - {"url", "kind", "path_prefix"}
        if extra:
            raise ConfigError(f"endpoints: unknown key(s) {', '.join(sorted(extra))} in {dict(e)!r}")
    elif isinstance(e, str):
        url, kind, prefix = e, "shardgate", None
        for scheme in ("ipfs", "btfs"):
            if e.startswith(scheme + "+"):
                url, kind, prefix = e[len(scheme) + 1 :], "ipfs", "/" + scheme
    else:
        raise ConfigError(f"endpoints: {e!r} is not a URL or a mapping")
    if kind not in ("shardgate", "ipfs"):
        raise ConfigError(f'endpoints: kind {kind!r} is not "shardgate" or "ipfs"')
    if not isinstance(url, str):
        raise ConfigError(f"endpoints: {e!r} has no url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"endpoints: {url!r} is not an http(s) URL without query or fragment")
    if kind == "ipfs":
        prefix = "/ipfs" if prefix is None else prefix
        if prefix and not prefix.startswith("/"):
            raise ConfigError(f"endpoints: path_prefix {prefix!r} must start with /")
    return EndpointSpec(url=url.rstrip("/"), kind=kind, path_prefix=(prefix or "").rstrip("/"))


def load_key(spec: Any) -> bytes:
    """A publisher key, given inline (``ed25519:BASE64``) or as a path to a ``.pub`` file."""
    if not isinstance(spec, str):
        raise ConfigError(f"trust: {spec!r} is not a key or a path")
    text = spec.strip()
    if not text.startswith("ed25519:"):
        try:
            text = Path(text).expanduser().read_text().strip()
        except OSError as e:
            raise ConfigError(f"trust: {spec!r} is neither `ed25519:...` nor a readable key file ({e})") from None
    if not text.startswith("ed25519:"):
        raise ConfigError(f"trust: {spec!r}: missing `ed25519:` prefix")
    try:
        raw = base64.b64decode(text[len("ed25519:") :], validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"trust: {spec!r} is not base64 of a 32-byte ed25519 key")
    return raw
