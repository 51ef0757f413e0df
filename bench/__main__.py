"""Benchmarks of the main job, each reported against a limit measured in the same run.

1. accept: the API's time to accept the original bulk example with 1,000 contacts (POST /send-bulk
   under granian, through real HTTP, to the S3 server), against a raw boto3 PUT of the same bytes to
   the same server. The ratio says what the API adds on top of the one write it must make.
2. first message: from a job landing in the bucket's inbox to its first message leaving the
   simulated WhatsApp, against the host's poll interval (the wait a polling design cannot avoid).

Needs ZAPGATE_S3_ENDPOINT and credentials (``just bench`` starts Ceph RGW when they are missing).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.engine import bench_distribution, bench_pacing, bench_throughput
from bench.stats import percentile, summary
from infra import layout
from infra.documents import AntiBanSettings, Job, Recipient, SessionStatus, encode
from infra.jobs import prepare_job
from infra.settings import S3Settings, Secret
from infra.store.s3 import S3Store, make_client
from session_host.whatsapp.simulated import SimulatedWorld
from tests.conftest import System, wait_for


def bulk_body(contacts: int) -> dict[str, object]:
    return {
        "userId": "bench",
        "contatos": [{"nome": f"Contato {i}", "numero": f"55119{i:08d}"} for i in range(contacts)],
        "mensagemBase": "Olá [nome], tudo bem?",
        "antiBanSettings": {"randomDelayMin": 6000, "randomDelayMax": 9000, "batchSize": 10, "batchDelayMs": 60000},
    }


def bench_accept(system: System, store: S3Store, rounds: int, contacts: int) -> None:
    store.put(layout.session_status("bench"), encode(SessionStatus(userId="bench", state="connected", paired=True)))
    body = json.dumps(bulk_body(contacts)).encode()
    api, put = [], []
    for _ in range(3):  # warm both paths
        system.http.post("/send-bulk", content=body, headers={"content-type": "application/json"})
    job_bytes = len(store.get(next(store.list(layout.INBOX))).data)
    payload = os.urandom(job_bytes)
    for i in range(rounds):
        started = time.perf_counter()
        answer = system.http.post("/send-bulk", content=body, headers={"content-type": "application/json"})
        api.append(time.perf_counter() - started)
        assert answer.status_code == 202, answer.text
        started = time.perf_counter()
        store.put(f"bench/raw-{i}", payload)
        put.append(time.perf_counter() - started)
    print(f"accept /send-bulk, {contacts} contacts ({len(body)} B in, {job_bytes} B stored), {rounds} rounds")
    print(f"  API (HTTP + validation + PUT)  {summary(api)}")
    print(f"  raw boto3 PUT, same bytes      {summary(put)}")
    print(
        f"  ratio API / PUT                p50 {percentile(api, 50) / percentile(put, 50):5.2f}x   "
        f"p99 {percentile(api, 99) / percentile(put, 99):5.2f}x"
    )


def bench_accept_large(system: System, contacts: int) -> None:
    """One request with ``contacts`` contacts: the time to accept it and the API worker's peak memory."""
    body = json.dumps(bulk_body(contacts)).encode()
    worker = _api_worker_pid(system)
    before = _peak_rss(worker)
    started = time.perf_counter()
    answer = system.http.post("/send-bulk", content=body, headers={"content-type": "application/json"}, timeout=120)
    elapsed = time.perf_counter() - started
    assert answer.status_code == 202, answer.text
    after = _peak_rss(worker)
    print(f"accept /send-bulk, {contacts} contacts in one request ({len(body) / 1e6:.1f} MB)")
    print(
        f"  time {elapsed:.2f} s;  API worker peak RSS {before / 1e6:.0f} MB before, {after / 1e6:.0f} MB after "
        f"({(after - before) / len(body):.1f} bytes of peak per byte of request)"
    )


def _api_worker_pid(system: System) -> int:
    assert system.api.popen is not None
    children = Path(f"/proc/{system.api.popen.pid}/task/{system.api.popen.pid}/children").read_text().split()
    return int(children[0]) if children else system.api.popen.pid


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def bench_first_message(system: System, store: S3Store, rounds: int, poll: float) -> None:
    world = SimulatedWorld(system.simulator_dir)
    system.http.get("/connect", params={"userId": "first"})
    wait_for(lambda: system.http.get("/sessions/first").json()["state"] == "qr", what="QR")
    world.scan("first", "5511977770000")
    wait_for(lambda: system.http.get("/sessions/first").json()["state"] == "connected", what="connected")
    latencies = []
    for i in range(rounds):
        job = prepare_job(
            Job(
                userId="first",
                recipients=[Recipient(number=f"55119{i:08d}", name="X")],
                message="oi",
                antiBanSettings=AntiBanSettings(randomDelayMin=0, randomDelayMax=0),
            ),
            job_id=f"first-{i}-{secrets.token_hex(3)}",
            default_region="BR",
        )
        before = len(world.delivered("first"))
        started = time.perf_counter()
        store.put(layout.inbox(job.jobId or ""), encode(job))
        wait_for(
            lambda before=before: len(world.delivered("first")) > before,
            timeout=30,
            interval=0.002,
            what="the first message",
        )
        latencies.append(time.perf_counter() - started)
        time.sleep(secrets.randbelow(1000) / 1000 * poll)  # land at a random point of the poll cycle
    print(f"job in the inbox -> first message out, host polling every {poll:g} s, {rounds} rounds")
    print(f"  latency                        {summary(latencies)}")
    print(
        f"  ratio to the poll interval     p50 {percentile(latencies, 50) / poll:5.2f}x   "
        f"p99 {percentile(latencies, 99) / poll:5.2f}x   (mean {statistics.mean(latencies) / poll:.2f}x)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--contacts", type=int, default=1000)
    parser.add_argument("--poll", type=float, default=1.0, help="the host's poll interval (its default: 1.0)")
    parser.add_argument("--engine-contacts", type=int, default=500)
    args = parser.parse_args()
    if not os.environ.get("ZAPGATE_S3_ENDPOINT"):
        print("bench: set ZAPGATE_S3_ENDPOINT and credentials, or run `just bench`", file=sys.stderr)
        return 2
    settings = S3Settings(
        endpoint=os.environ["ZAPGATE_S3_ENDPOINT"],
        access_key=os.environ.get("ZAPGATE_S3_ACCESS_KEY"),
        secret_key=Secret(os.environ.get("ZAPGATE_S3_SECRET_KEY", "")),
    )
    client = make_client(settings)
    bucket = f"zapgate-bench-{secrets.token_hex(4)}"
    client.create_bucket(Bucket=bucket)
    store = S3Store(client, bucket)
    with tempfile.TemporaryDirectory() as tmp:
        system = System(
            Path(tmp), store, {"ZAPGATE_HOST_POLL_INTERVAL": str(args.poll), "ZAPGATE_LOG_LEVEL": "WARNING"}
        )
        try:
            system.start()
            bench_accept(system, store, args.rounds, args.contacts)
            bench_accept_large(system, 100_000)
            bench_first_message(system, store, max(10, args.rounds // 3), args.poll)
            system.stop()
            engine_store = S3Store(client, bucket, "engine")
            bench_throughput(engine_store, Path(tmp), args.engine_contacts)
            bench_throughput(engine_store, Path(tmp), args.engine_contacts, message_ids=False)
            bench_pacing(engine_store, Path(tmp), 40, 200)
            bench_distribution(engine_store, Path(tmp), 120, 100, 300)
        except (AssertionError, httpx.HTTPError, RuntimeError):
            print(system.logs(), file=sys.stderr)
            raise
        finally:
            system.stop()
            for key in list(store.list("")):
                store.delete(key)
            client.delete_bucket(Bucket=bucket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
