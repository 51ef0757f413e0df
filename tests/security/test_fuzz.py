"""schemathesis against zapgate's own OpenAPI document, on the real API process (granian) and the
real S3 store: no answer is a 5xx, and every answer (status, content type, headers, body) is one
the document describes. Bounded: a few examples an operation, no shrinking; well under a minute."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks

from infra.store.s3 import S3Store
from tests.conftest import System, free_port
from tests.security.keyed import ADMIN_KEY

EXAMPLES = 15
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def api_process(tmp_path_factory: pytest.TempPathFactory, s3_client: Any, bucket: str) -> Iterator[System]:
    """The API alone (no session host: fuzzed /connect calls only leave commands in the store)."""
    store = S3Store(s3_client, bucket, prefix=f"fuzz-{free_port()}")
    env = {"ZAPGATE_API_ADMIN_KEY": ADMIN_KEY, "ZAPGATE_API_RATE_LIMIT": "0"}
    system = System(tmp_path_factory.mktemp("fuzz"), store, env)
    system.api.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            if system.http.get("/healthz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the API did not come up:\n{system.api.log()}")
        time.sleep(0.1)
    yield system
    system.stop()
    log = Path(system.api.log_path).read_text(errors="replace")
    assert "Traceback" not in log, log[-4000:]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_every_answer_is_described_and_none_is_a_server_error(api_process: System, mode: GenerationMode) -> None:
    # One test drives every operation (schemathesis's pytest fixtures do not run under this pytest).
    schema = schemathesis.openapi.from_url(f"{api_process.url}/schema/openapi.json")
    failures: dict[str, str] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    for operation in operations:

        @given(case=operation.as_strategy(mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case: Any) -> None:
            case.call_and_validate(headers={"X-Api-Key": ADMIN_KEY}, checks=CHECKS)

        try:
            run()
        except Unsatisfiable:  # nothing of this operation can be made invalid (no parameters, no body)
            continue
        except Exception as exc:  # every operation is tried; all failures are reported together
            failures[operation.label] = str(exc)[:3000]
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
