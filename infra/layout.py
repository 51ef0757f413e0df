"""Where everything lives in the store. Both processes build keys only through these functions.

::

    inbox/<jobId>.json                  Job, waiting for the host (the API writes here; so may others)
    jobs/<jobId>/job.json               Job, as the host accepted it (numbers normalised, id fixed)
    jobs/<jobId>/state.json             JobState: status, totals, estimated end
    jobs/<jobId>/results/<n>.json       the per-recipient results, RESULTS_PER_CHUNK to a chunk
    users/<userId>/jobs/<jobId>         marker: a job of this account (for listing)
    rejected/<name>                     a bad inbox document, moved aside as it was
    rejected/<name>.reason.json         Rejection: why
    queue/<userId>/<jobId>              marker: an unfinished job of this account
    commands/<userId>/<time>-<id>.json  SessionCommand for the host
    sessions/<userId>/status.json       SessionStatus
    sessions/<userId>/auth.db           the account's WhatsApp credentials (neonize's SQLite database)
    sessions/<userId>/settings.json     AccountSettings: daily cap, quiet hours, time zone, warm-up
    sessions/<userId>/count.json        AccountCount: messages sent today, and when the next may leave
    hosts/<hostId>.json                 HostBeat: a session host's sign of life
    keys/<keyId>.json                   ApiKey: a user's API key, hashed (api/auth.py)
    leases/<userId>/<epoch>.json        which host serves the account (session_host.leases)
"""

from __future__ import annotations

INBOX = "inbox/"
COMMANDS = "commands/"
SESSIONS = "sessions/"
QUEUE = "queue/"
REJECTED = "rejected/"
HOSTS = "hosts/"
KEYS = "keys/"


def inbox(job_id: str) -> str:
    return f"{INBOX}{job_id}.json"


def job(job_id: str) -> str:
    return f"jobs/{job_id}/job.json"


def job_state(job_id: str) -> str:
    return f"jobs/{job_id}/state.json"


def job_results(job_id: str, chunk: int) -> str:
    return f"jobs/{job_id}/results/{chunk:05d}.json"


def user_jobs(user_id: str) -> str:
    return f"users/{user_id}/jobs/"


def user_job(user_id: str, job_id: str) -> str:
    return f"{user_jobs(user_id)}{job_id}"


def rejected(name: str) -> str:
    return f"{REJECTED}{name}"


def rejection(name: str) -> str:
    return f"{REJECTED}{name}.reason.json"


def queue_marker(user_id: str, job_id: str) -> str:
    return f"{QUEUE}{user_id}/{job_id}"


def command(user_id: str, name: str) -> str:
    return f"{COMMANDS}{user_id}/{name}.json"


def session_status(user_id: str) -> str:
    return f"{SESSIONS}{user_id}/status.json"


def session_auth(user_id: str) -> str:
    return f"{SESSIONS}{user_id}/auth.db"


def user_of(key: str, prefix: str) -> str:
    """The userId in a key such as ``sessions/<userId>/status.json`` listed under ``prefix``."""
    return key[len(prefix) :].split("/", 1)[0]


def account_settings(user_id: str) -> str:
    return f"{SESSIONS}{user_id}/settings.json"


def daily_count(user_id: str) -> str:
    return f"{SESSIONS}{user_id}/count.json"


def host_beat(host_id: str) -> str:
    return f"{HOSTS}{host_id}.json"


def leases(user_id: str) -> str:
    return f"leases/{user_id}/"


def lease(user_id: str, epoch: int) -> str:
    return f"{leases(user_id)}{epoch:010d}.json"


def api_key(key_id: str) -> str:
    return f"{KEYS}{key_id}.json"
