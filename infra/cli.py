"""``python -m infra.cli``: a small command line for a running zapgate, over its HTTP API.

    python -m infra.cli sessions
    python -m infra.cli send user1 5511999999999 "Olá, tudo bem?"     # sends and follows the job
    python -m infra.cli job 20261203T120000000000-ab12cd34

``--url`` (or ZAPGATE_URL) names the API; by default http://127.0.0.1 on ZAPGATE_API_PORT (8000).
Against an API with keys, ``--key`` (or ZAPGATE_API_KEY) is sent as ``X-Api-Key``: the admin key,
or the account's own key.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import httpx

FINAL = {"done", "failed", "cancelled", "rejected"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zapgate", description=__doc__.split("\n")[0])
    local = f"http://127.0.0.1:{os.environ.get('ZAPGATE_API_PORT', '8000')}"  # as `just run` serves it
    parser.add_argument("--url", default=os.environ.get("ZAPGATE_URL", local))
    parser.add_argument("--key", default=os.environ.get("ZAPGATE_API_KEY"), help="sent as X-Api-Key")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("sessions", help="list the accounts and their state")
    send = commands.add_parser("send", help="send one message and follow it to the end")
    send.add_argument("user")
    send.add_argument("number")
    send.add_argument("message")
    job = commands.add_parser("job", help="show a job")
    job.add_argument("job_id")
    args = parser.parse_args(argv)
    headers = {"X-Api-Key": args.key} if args.key else {}
    with httpx.Client(base_url=args.url, timeout=30, headers=headers) as api:
        try:
            if args.command == "sessions":
                return _show(api.get("/sessions"))
            if args.command == "job":
                return _show(api.get(f"/jobs/{args.job_id}"))
            return _send(api, args.user, args.number, args.message)
        except httpx.TransportError as exc:
            print(f"zapgate: cannot reach the API at {args.url}: {exc}", file=sys.stderr)
            return 2


def _send(api: httpx.Client, user: str, number: str, message: str) -> int:
    answer = api.post("/send", json={"userId": user, "number": number, "message": message})
    if answer.status_code != 202:
        return _show(answer)
    job_id = answer.json()["jobId"]
    print(f"queued as job {job_id}; following it…", file=sys.stderr)
    while (job := api.get(f"/jobs/{job_id}").json())["status"] not in FINAL:
        time.sleep(0.5)
    result = job["results"][0]
    print(
        json.dumps(
            {
                "status": job["status"],
                "detail": job["detail"],
                "number": result["number"],
                "jid": result["jid"],
                "outcome": result["status"],
                "error": result["error"],
            },
            indent=2,
            ensure_ascii=False,
        )
    )
    return 0 if job["status"] == "done" else 1


def _show(answer: httpx.Response) -> int:
    print(json.dumps(answer.json(), indent=2, ensure_ascii=False))
    return 0 if answer.is_success else 1


if __name__ == "__main__":
    sys.exit(main())
