"""Memory per idle session with the neonize backend in worker processes: ``python -m bench.memory``.

What it measures. This process plays the host: it imports the host's modules (``session_host.host``,
the S3 store and boto3) and keeps one ``WorkerClient`` per session, each with its own worker process
(``python -m session_host.whatsapp.worker --backend neonize``). Every session is then started: the
worker has imported neonize, built its ``NewClient`` on a fresh SQLite file, and attempted the
connection. Without a network the attempt fails within a second (DNS), and the worker stays up,
idle, with the client built; with a network it would show QR codes and wait for a scan, which is
idle too. Nothing is paired: a paired session also holds its keys, app state and a websocket, so
this is a floor for a session, not its ceiling.

PSS, not RSS, is summed over the worker processes: the Go library (19 MB file), libpython and the
other shared objects are mapped by every worker, and PSS charges each process its share of a shared
page, so the sum is what the sessions really take together. The host's own PSS is shown apart.

The sessions are added in steps (1, then 10, then 50 alive at once) and measured at each step,
two seconds after the last one settled. Every worker is stopped at the end and waited for. Takes
about a minute on two cores; needs no S3 server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from session_host.whatsapp import Connected, Disconnected, Event, QrCode
from session_host.whatsapp.worker import Timeouts, WorkerBackend, WorkerClient

GOAL_MB = 30.0
SETTLE = 2.0
SPAWN_CONCURRENCY = 4


def smaps_rollup(pid: int) -> dict[str, int]:
    """The kB figures of /proc/PID/smaps_rollup (Pss, Pss_Anon, Pss_File, Rss, ...)."""
    figures = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, value = line.partition(":")
        figures[name] = int(value.split()[0])
    return figures


class Session:
    def __init__(self, backend: WorkerBackend, work: Path, index: int) -> None:
        self.outcome: str | None = None
        user_id = f"bench-{index:03d}"
        self.client: WorkerClient = backend.new_client(user_id, str(work / user_id / "auth.db"), self.emit)

    def emit(self, event: Event) -> None:
        if isinstance(event, Disconnected) and event.final:
            self.outcome = self.outcome or "connect failed (offline)"
        elif isinstance(event, QrCode | Connected):
            self.outcome = self.outcome or "showing QR codes"


async def start_sessions(sessions: list[Session]) -> None:
    limit = asyncio.Semaphore(SPAWN_CONCURRENCY)

    async def start(session: Session) -> None:
        async with limit:
            await session.client.start()

    await asyncio.gather(*(start(session) for session in sessions))
    deadline = time.monotonic() + 20
    while any(session.outcome is None for session in sessions) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(SETTLE)


def measure(sessions: list[Session]) -> dict[str, float]:
    pids = [session.client.pid for session in sessions]
    if None in pids:
        raise RuntimeError("a worker is not running")
    rollups = [smaps_rollup(pid) for pid in pids if pid is not None]
    count = len(rollups)
    host = smaps_rollup(os.getpid())
    return {
        "sessions": count,
        "total": sum(r["Pss"] for r in rollups) / 1024,
        "per_session": sum(r["Pss"] for r in rollups) / 1024 / count,
        "anon": sum(r["Pss_Anon"] for r in rollups) / 1024 / count,
        "file": sum(r["Pss_File"] for r in rollups) / 1024 / count,
        "rss": sum(r["Rss"] for r in rollups) / 1024 / count,
        "host": host["Pss"] / 1024,
    }


def print_table(rows: list[dict[str, float]]) -> None:
    print()
    print("sessions | workers' PSS total | PSS per session (anon + file) | RSS per session | host PSS")
    print("---------|-------------------|-------------------------------|-----------------|---------")
    for row in rows:
        print(
            f"{row['sessions']:8.0f} | {row['total']:14.1f} MB | {row['per_session']:6.1f} MB "
            f"({row['anon']:5.1f} + {row['file']:4.1f})       | {row['rss']:12.1f} MB | {row['host']:5.1f} MB"
        )


async def run(steps: list[int]) -> list[dict[str, float]]:
    import boto3  # noqa: F401  # the host's own imports, so that its PSS is a host's

    import infra.store.s3  # noqa: F401
    import session_host.host  # noqa: F401

    backend = WorkerBackend("neonize", timeouts=Timeouts(spawn=60))
    rows = []
    sessions: list[Session] = []
    with tempfile.TemporaryDirectory(prefix="zapgate-bench-memory-") as work:
        try:
            for target in steps:
                began = time.monotonic()
                new = [Session(backend, Path(work), index) for index in range(len(sessions), target)]
                sessions += new
                await start_sessions(new)
                row = measure(sessions)
                rows.append(row)
                outcomes = {session.outcome for session in sessions}
                print(
                    f"{target:3d} sessions: {len(new)} started in {time.monotonic() - began:.1f} s; "
                    f"{row['per_session']:.1f} MB PSS per session; connect: {', '.join(map(str, outcomes))}",
                    flush=True,
                )
        finally:
            await asyncio.gather(*(session.client.stop() for session in sessions), return_exceptions=True)
    left = [session.client.pid for session in sessions if session.client.pid is not None]
    if left:
        raise RuntimeError(f"workers still running after stop: {left}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="1,10,50", help="session counts to measure at (default 1,10,50)")
    steps = sorted({int(step) for step in parser.parse_args().steps.split(",")})
    began = time.monotonic()
    rows = asyncio.run(run(steps))
    print_table(rows)
    last = rows[-1]
    verdict = "within" if last["per_session"] <= GOAL_MB else "OVER"
    print(
        f"\nat {last['sessions']:.0f} sessions: {last['per_session']:.1f} MB PSS per idle session, "
        f"{verdict} the goal of {GOAL_MB:.0f} MB; host {last['host']:.1f} MB; "
        f"all workers stopped; {time.monotonic() - began:.0f} s in all"
    )


if __name__ == "__main__":
    main()
