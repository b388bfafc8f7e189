"""Endpoints and their health: shardgate gateways and IPFS/BTFS path gateways.

A failing endpoint is set aside (tried last) for `cooldown` seconds, doubling
while it keeps failing, as the gateway's own outlier ejection does for its
origins. A bad chunk or a stall sets it aside at once; other failures after
two in a row.
"""

from __future__ import annotations

import random
import time
from urllib.parse import quote

from .config import Config, EndpointSpec
from .manifest import FileEntry, Release


class Endpoint:
    def __init__(self, spec: EndpointSpec, api_key: str | None):
        self.spec = spec
        self.label = spec.label
        self.kind = spec.kind
        # The API key goes to shardgate gateways only, never to a public IPFS gateway.
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key and spec.kind == "shardgate" else {}
        self.failures = 0
        self.ejections = 0
        self.ejected_until = 0.0
        self.ttfb: float | None = None

    def healthy(self, now: float) -> bool:
        return now >= self.ejected_until

    def observe(self, ttfb: float) -> None:
        """Records a first-byte time (what `fastest` orders by); says nothing of the bytes yet."""
        self.ttfb = ttfb if self.ttfb is None else 0.8 * self.ttfb + 0.2 * ttfb

    def succeeded(self) -> None:
        """The endpoint served what was asked and it verified: it is healthy again."""
        self.failures = 0
        self.ejections = 0
        self.ejected_until = 0.0

    def failed(self, cooldown: float, at_once: bool) -> None:
        self.failures += 1
        if at_once or self.failures >= 2:
            self.ejected_until = time.monotonic() + cooldown * (2 ** min(self.ejections, 5))
            self.ejections += 1

    # URLs. `None`: this endpoint cannot serve it (an IPFS gateway without the CID).
    def manifest_url(self, name: str, segment: str, cid: str | None) -> str | None:
        if self.kind == "shardgate":
            return f"{self.spec.url}/v1/datasets/{quote(name)}/{quote(segment)}/manifest"
        return self._cid(cid)

    def placement_url(self, release: Release) -> str | None:
        if self.kind == "shardgate":
            return f"{self.spec.url}/v1/datasets/{quote(release.name)}/{quote(release.version)}/placement"
        return None

    def file_url(self, release: Release, f: FileEntry) -> str | None:
        if self.kind == "shardgate":
            v = quote(release.version)
            return f"{self.spec.url}/v1/datasets/{quote(release.name)}/{v}/files/{quote(f.path, safe='/')}"
        return self._cid(release.cids.get(f.blake3))

    def table_url(self, release: Release, f: FileEntry) -> str | None:
        if f.chunk_table is None:
            return None
        if self.kind == "shardgate":
            return f"{self.spec.url}/v1/blobs/{f.chunk_table}"
        return self._cid(release.cids.get(f.chunk_table))

    def _cid(self, cid: str | None) -> str | None:
        return f"{self.spec.url}{self.spec.path_prefix}/{quote(cid)}" if cid else None


def order(endpoints: list[Endpoint], config: Config) -> list[Endpoint]:
    """Healthy endpoints first (in configured order, or fastest first), then the sick ones, soonest back first."""
    now = time.monotonic()
    healthy = [e for e in endpoints if e.healthy(now)]
    if config.policy == "fastest":
        # An endpoint not timed yet goes first, so that it gets timed.
        healthy.sort(key=lambda e: 0.0 if e.ttfb is None else e.ttfb)
    sick = sorted((e for e in endpoints if not e.healthy(now)), key=lambda e: e.ejected_until)
    return healthy + sick


def backoff(config: Config, round_: int) -> float:
    """Full jitter: uniform in [0, backoff * 2^round], at most 5 s."""
    return random.uniform(0, min(5.0, config.backoff * (2**round_)))
