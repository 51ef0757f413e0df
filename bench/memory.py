"""Memory per idle session with the neonize backend in worker processes: ``python -m bench.memory``.

What it measures. This process plays the host: it imports the host's modules (``session_host.host``,
the S3 store and boto3) and keeps one ``WorkerClient`` per session, each with its own worker process:
forked from the zygote (``session_host.whatsapp.zygote``, the default), or with ``--mode fresh`` a
fresh ``python -m session_host.whatsapp.worker --backend neonize`` each, as before the zygote;
``--mode both`` measures both in one run, the zygote first. Every session is then started: the
worker has imported neonize, built its ``NewClient`` on a fresh SQLite file, and attempted the
connection. Without a network the attempt fails within a second (DNS), and the worker stays up,
idle, with the client built; with a network it would show QR codes and wait for a scan, which is
idle too. Nothing is paired: a paired session also holds its keys, app state and a websocket, so
this is a floor for a session, not its ceiling.

PSS, not RSS, is summed over the worker processes: the Go library (19 MB file), libpython and the
other shared objects are mapped by every worker, and PSS charges each process its share of a shared
page, so the sum is what the sessions really take together. With the zygote, the fork server's pages
that the workers still share are charged partly to it: its PSS, and that of the resource tracker
that multiprocessing starts with it, is counted in the total ("zygote" column) and so in the figure
per session (total / sessions). The host's own PSS is shown apart.

The sessions are added in steps (1, then 10, then 50 alive at once) and measured at each step,
two seconds after the last one settled. Every worker is stopped at the end and waited for. Takes
about a minute per mode on two cores; needs no S3 server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from session_host.whatsapp import Connected, Disconnected, Event, QrCode, zygote
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


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def measure(sessions: list[Session], forked: bool) -> dict[str, float]:
    pids = [session.client.pid for session in sessions]
    if None in pids:
        raise RuntimeError("a worker is not running")
    workers = [pid for pid in pids if pid is not None]
    helpers = zygote.helper_pids() if forked else []
    if forked and any(parent_pid(pid) != zygote.fork_server_pid() for pid in workers):
        raise RuntimeError("a worker was not forked from the zygote (see the log)")
    rollups = [smaps_rollup(pid) for pid in workers]
    helper_rollups = [smaps_rollup(pid) for pid in helpers]
    count = len(rollups)
    everything = rollups + helper_rollups
    host = smaps_rollup(os.getpid())
    return {
        "sessions": count,
        "workers": sum(r["Pss"] for r in rollups) / 1024,
        "zygote": sum(r["Pss"] for r in helper_rollups) / 1024,
        "per_session": sum(r["Pss"] for r in everything) / 1024 / count,
        "anon": sum(r["Pss_Anon"] for r in everything) / 1024 / count,
        "file": sum(r["Pss_File"] for r in everything) / 1024 / count,
        "rss": sum(r["Rss"] for r in rollups) / 1024 / count,
        "host": host["Pss"] / 1024,
    }


def print_table(mode: str, rows: list[dict[str, float]]) -> None:
    print()
    print(f"mode: {MODES[mode]}")
    print("sessions | workers' PSS | zygote PSS | PSS per session (anon + file) | RSS per worker | host PSS")
    print("---------|--------------|------------|-------------------------------|----------------|---------")
    for row in rows:
        print(
            f"{row['sessions']:8.0f} | {row['workers']:9.1f} MB | {row['zygote']:7.1f} MB | "
            f"{row['per_session']:6.1f} MB ({row['anon']:5.1f} + {row['file']:4.1f})       | "
            f"{row['rss']:11.1f} MB | {row['host']:5.1f} MB"
        )
    if mode == "zygote":
        print("(zygote: the fork server and multiprocessing's resource tracker; counted in the PSS per session)")


MODES = {"zygote": "workers forked from the zygote", "fresh": "a fresh interpreter per worker"}


async def run(mode: str, steps: list[int]) -> list[dict[str, float]]:
    import boto3  # noqa: F401  # the host's own imports, so that its PSS is a host's

    import infra.store.s3  # noqa: F401
    import session_host.host  # noqa: F401

    forked = mode == "zygote"
    backend = WorkerBackend("neonize", timeouts=Timeouts(spawn=60), zygote=forked)
    rows = []
    sessions: list[Session] = []
    print(f"-- {MODES[mode]}", flush=True)
    with tempfile.TemporaryDirectory(prefix="zapgate-bench-memory-") as work:
        try:
            for target in steps:
                began = time.monotonic()
                new = [Session(backend, Path(work), index) for index in range(len(sessions), target)]
                sessions += new
                await start_sessions(new)
                row = measure(sessions, forked)
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
    parser.add_argument(
        "--mode",
        choices=("zygote", "fresh", "both"),
        default="zygote",
        help="workers forked from the zygote (default), fresh interpreters (as before), or both in turn",
    )
    args = parser.parse_args()
    steps = sorted({int(step) for step in args.steps.split(",")})
    modes = ["zygote", "fresh"] if args.mode == "both" else [args.mode]
    began = time.monotonic()
    results = {mode: asyncio.run(run(mode, steps)) for mode in modes}
    for mode, rows in results.items():
        print_table(mode, rows)
    print()
    for mode, rows in results.items():
        last = rows[-1]
        verdict = "within" if last["per_session"] <= GOAL_MB else "OVER"
        print(
            f"{MODES[mode]}: at {last['sessions']:.0f} sessions {last['per_session']:.1f} MB PSS per idle session, "
            f"{verdict} the goal of {GOAL_MB:.0f} MB; host {last['host']:.1f} MB"
        )
    print(f"all workers stopped; {time.monotonic() - began:.0f} s in all")


if __name__ == "__main__":
    main()
