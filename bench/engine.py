"""The sending engine, in the host's own process on the real S3 server with the simulated WhatsApp:

- throughput with pacing off, against the raw PUT rate of the same server (a ratio);
- S3 requests per message (every call the host makes to the store, counted);
- pacing error: observed gap minus the scheduled gap, with a fixed gap so the schedule is known;
- the shape of the random pause: observed gaps against the uniform [min, max] they are drawn from.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.stats import percentile
from infra.documents import AntiBanSettings
from infra.store import ObjectStore, StoredObject
from infra.store.s3 import S3Store
from session_host.whatsapp.simulated import SimulatedWorld
from tests.host.harness import HostHarness


class CountingStore:
    """An ObjectStore that counts the calls made to the one it wraps."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    def get(self, key: str) -> StoredObject:
        self.calls["get"] += 1
        return self.inner.get(key)

    def put(self, key: str, data: bytes, *, create_only: bool = False, if_match: str | None = None) -> str:
        self.calls["put"] += 1
        return self.inner.put(key, data, create_only=create_only, if_match=if_match)

    def delete(self, key: str) -> None:
        self.calls["delete"] += 1
        self.inner.delete(key)

    def list(self, prefix: str) -> Any:
        self.calls["list"] += 1
        return self.inner.list(prefix)

    def exists(self, key: str) -> bool:
        self.calls["head"] += 1
        return self.inner.exists(key)

    def check(self) -> None:
        self.inner.check()


def raw_put_rate(store: S3Store, size: int, count: int = 100) -> float:
    payload = secrets.token_bytes(size)
    started = time.perf_counter()
    for i in range(count):
        store.put(f"bench/put-{i}", payload)
    return count / (time.perf_counter() - started)


async def _campaign(
    store: ObjectStore, tmp: Path, contacts: int, pace: AntiBanSettings, message_ids: bool = True
) -> list[float]:
    SimulatedWorld(tmp / "whatsapp").set_message_ids(message_ids)  # the world HostHarness opens
    async with HostHarness(store, tmp, poll_interval=1.0) as h:  # the host's default poll interval
        if isinstance(store, CountingStore):
            h.store = store.inner  # the benchmark's own reads are not the host's
        await h.connect("bench", "5511977770000")
        job_id = await h.submit("bench", [(f"C{i}", f"55119{i:08d}") for i in range(contacts)], antiBanSettings=pace)
        state = await h.final(job_id, timeout=600)
        assert state.totals.sent == contacts, (state.status, state.detail, state.totals)
        return [m.at for m in h.world.delivered("bench")]


def bench_throughput(store: S3Store, tmp: Path, contacts: int, message_ids: bool = True) -> None:
    """``message_ids=False``: a backend that cannot pass our message id (neonize 0.5.2), for which the
    host writes one more checkpoint a message, before it leaves (session_host.sender)."""
    mode = "ids" if message_ids else "no-ids"
    counting = CountingStore(S3Store(store.client, store.bucket, f"{store.prefix}throughput-{mode}"))
    instant = AntiBanSettings(randomDelayMin=0, randomDelayMax=0, batchSize=10_000, batchDelayMs=0, typing=False)
    times = asyncio.run(_campaign(counting, tmp / f"throughput-{mode}", contacts, instant, message_ids))
    rate = (len(times) - 1) / (times[-1] - times[0])
    put_rate = raw_put_rate(store, 50_000)
    calls = sum(counting.calls.values())
    backend = "a backend that keeps our message ids" if message_ids else "a backend without our ids (as neonize)"
    print(f"sending with pacing off, {contacts} messages, one account, {backend}")
    print(f"  messages per second          {rate:8.1f}")
    print(f"  raw S3 PUTs per second       {put_rate:8.1f}   (50 kB objects, one at a time)")
    print(f"  ratio messages / PUTs        {rate / put_rate:8.2f}")
    per_message = {kind: count / contacts for kind, count in sorted(counting.calls.items())}
    kinds = ", ".join(f"{kind} {share:.2f}" for kind, share in per_message.items())
    print(f"  S3 requests per message      {calls / contacts:8.2f}   ({kinds})")
    print("                               (all the host's requests: polling and session writes included)")


def bench_pacing(store: S3Store, tmp: Path, contacts: int, gap_ms: int) -> None:
    fixed = AntiBanSettings(
        randomDelayMin=gap_ms, randomDelayMax=gap_ms, batchSize=10_000, batchDelayMs=0, typing=False
    )
    times = asyncio.run(
        _campaign(S3Store(store.client, store.bucket, store.prefix + "pacing"), tmp / "pacing", contacts, fixed)
    )
    errors = [(b - a) - gap_ms / 1000 for a, b in itertools.pairwise(times)]
    print(f"pacing error, {contacts} messages at a fixed gap of {gap_ms} ms (observed gap minus scheduled)")
    print(
        f"  p50 {percentile(errors, 50) * 1000:6.1f} ms   p99 {percentile(errors, 99) * 1000:6.1f} ms   "
        f"min {min(errors) * 1000:6.1f} ms (never negative: no gap is shorter than scheduled)"
    )


def bench_distribution(store: S3Store, tmp: Path, contacts: int, low_ms: int, high_ms: int) -> None:
    pace = AntiBanSettings(
        randomDelayMin=low_ms, randomDelayMax=high_ms, batchSize=10_000, batchDelayMs=0, typing=False
    )
    times = asyncio.run(
        _campaign(
            S3Store(store.client, store.bucket, store.prefix + "distribution"), tmp / "distribution", contacts, pace
        )
    )
    gaps = sorted(b - a for a, b in itertools.pairwise(times))
    overhead = statistics.median(gaps) - (low_ms + high_ms) / 2000
    shifted = [g - overhead for g in gaps]
    low, high = low_ms / 1000, high_ms / 1000
    ks = max(
        max(
            abs((i + 1) / len(shifted) - _uniform_cdf(g, low, high)), abs(i / len(shifted) - _uniform_cdf(g, low, high))
        )
        for i, g in enumerate(shifted)
    )
    critical = 1.36 / len(shifted) ** 0.5  # Kolmogorov-Smirnov at 5 %
    print(f"random pause, {len(gaps)} gaps drawn from uniform [{low_ms}, {high_ms}] ms")
    median = statistics.median(gaps)
    print(
        f"  observed min {gaps[0] * 1000:6.1f}  median {median * 1000:6.1f}  max {gaps[-1] * 1000:6.1f} ms;"
        f" median overhead {overhead * 1000:.1f} ms"
    )
    print(
        f"  Kolmogorov-Smirnov distance to uniform (after removing the overhead) {ks:.3f}; "
        f"5 % critical value {critical:.3f}: {'consistent' if ks < critical else 'NOT consistent'} with uniform"
    )


def _uniform_cdf(x: float, low: float, high: float) -> float:
    return min(1.0, max(0.0, (x - low) / (high - low)))
