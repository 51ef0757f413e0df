"""Shared fixtures: the real S3 server, stores of both kinds, and the real processes.

The S3 server comes from the environment (``ZAPGATE_S3_ENDPOINT`` and credentials), as
``just test`` sets it after starting Ceph RGW with ``infra/s3server/rgw.sh``. Tests that need it
fail, not skip, when it is missing: a suite that silently skipped its S3 half would prove nothing.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.settings import S3Settings, Secret
from infra.store import ObjectStore
from infra.store.local import LocalStore
from infra.store.s3 import S3Store, make_client

ROOT = Path(__file__).resolve().parent.parent


def s3_settings() -> S3Settings:
    endpoint = os.environ.get("ZAPGATE_S3_ENDPOINT")
    if not endpoint:
        pytest.fail(
            "no S3 server: run the tests with `just test` (it starts Ceph RGW), or set "
            "ZAPGATE_S3_ENDPOINT, ZAPGATE_S3_ACCESS_KEY and ZAPGATE_S3_SECRET_KEY"
        )
    return S3Settings(
        endpoint=endpoint,
        region=os.environ.get("ZAPGATE_S3_REGION", "us-east-1"),
        access_key=os.environ.get("ZAPGATE_S3_ACCESS_KEY"),
        secret_key=Secret(os.environ.get("ZAPGATE_S3_SECRET_KEY", "")),
    )


@pytest.fixture(scope="session")
def s3_client() -> Any:
    return make_client(s3_settings())


@pytest.fixture(scope="session")
def bucket(s3_client: Any) -> Iterator[str]:
    """One bucket for the run, emptied and removed at the end."""
    name = f"zapgate-test-{secrets.token_hex(4)}"
    s3_client.create_bucket(Bucket=name)
    yield name
    paginator = s3_client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=name):
        for item in page.get("Contents", ()):
            s3_client.delete_object(Bucket=name, Key=item["Key"])
    s3_client.delete_bucket(Bucket=name)


@pytest.fixture
def s3_store(s3_client: Any, bucket: str) -> S3Store:
    """A store under a fresh prefix of the run's bucket, so tests do not see each other."""
    return S3Store(s3_client, bucket, prefix=f"t-{secrets.token_hex(6)}")


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    return request.getfixturevalue(f"{request.param}_store")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """A zapgate process started for a test, with its log kept for the failure report."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.args, self.env, self.log_path = name, args, env, log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.popen = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        return self

    def stop(self, sig: int = 15, timeout: float = 20) -> int | None:
        if self.popen is None or self.popen.poll() is not None:
            return self.popen.returncode if self.popen else None
        self.popen.send_signal(sig)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class System:
    """The API under granian and one session host, both real processes, on one store."""

    def __init__(self, tmp: Path, store: S3Store, extra_env: dict[str, str]) -> None:
        self.tmp = tmp
        self.store = store
        store_url = f"s3://{store.bucket}/{store.prefix}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.simulator_dir = tmp / "whatsapp"
        self.env = {
            **os.environ,
            "ZAPGATE_STORE": store_url,
            "ZAPGATE_API_PORT": str(self.port),
            "ZAPGATE_WHATSAPP_BACKEND": "simulated",
            "ZAPGATE_WHATSAPP_SIMULATOR_DIR": str(self.simulator_dir),
            "ZAPGATE_HOST_POLL_INTERVAL": "0.2",
            "ZAPGATE_HOST_HEARTBEAT": "0.5",
            "ZAPGATE_HOST_WORK_DIR": str(tmp / "host-work"),
            **extra_env,
        }
        self.api = Process("api", [sys.executable, "-m", "api"], self.env, tmp / "api.log")
        self.hosts: list[Process] = []
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def start(self) -> System:
        self.api.start()
        self.start_host()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self.http.get("/healthz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the API did not come up:\n{self.api.log()}")

    def start_host(self, env: dict[str, str] | None = None) -> Process:
        host = Process(
            f"host{len(self.hosts)}",
            [sys.executable, "-m", "session_host"],
            {**self.env, **(env or {})},
            self.tmp / f"host{len(self.hosts)}.log",
        )
        self.hosts.append(host.start())
        return host

    def stop(self) -> None:
        for process in [*self.hosts, self.api]:
            process.stop()
        self.http.close()

    def logs(self) -> str:
        return "\n".join(f"----- {p.name} -----\n{p.log()}" for p in [self.api, *self.hosts])


def wait_for(predicate: Any, timeout: float = 20, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def system_factory(tmp_path: Path, s3_store: S3Store, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Start real API + host processes on a fresh prefix of the S3 bucket."""
    systems: list[System] = []

    def start(**extra_env: str) -> System:
        system = System(tmp_path, s3_store, extra_env).start()
        systems.append(system)
        return system

    yield start
    for system in systems:
        system.stop()
        if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
            print(system.logs())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report
