"""The two HTML pages of the original contract: ``/?userId=`` (state) and ``/connect?userId=`` (QR).

Both work for a user never seen before. The connect page follows the session by polling
``/sessions/{userId}`` every two seconds; without JavaScript it reloads itself.

With keys required, a browser opens them by a page link (``POST /sessions/{userId}/link``): the
page answers its ``?token=`` with an HttpOnly, SameSite=Strict cookie for that account, so that its
polling, QR image and phone-code form work without a key (see api/auth.py), and takes the token out
of the address bar.
"""

from __future__ import annotations

from html import escape

from litestar import Controller, MediaType, Request, Response, get
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.params import FromQuery

from api.auth import COOKIE, COOKIE_TTL, Auth, Principal
from api.openapi import documented
from api.requests import check_user_id
from api.service import read_status
from api.sessions import ensure_started, has_qr
from infra.documents import SessionStatus
from infra.store import ObjectStore

STATE_WORDS = {
    "starting": "Starting the session…",
    "qr": "Scan the QR code: WhatsApp › Settings › Linked devices › Link a device",
    "connected": "Connected",
    "reconnecting": "Connection lost; reconnecting…",
    "disconnected": "Disconnected",
    "logged_out": "Logged out: connect again to pair with a new QR code",
    "qr_expired": "The QR code expired unscanned",
    "paused": "Connected; sending paused",
    "failed": "The session could not start",
}

_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;background:#f4f6f5;color:#1b1f1d}
main{max-width:34rem;margin:3rem auto;background:#fff;padding:2rem;border-radius:12px;
box-shadow:0 1px 4px #0002}
h1{font-size:1.3rem;margin-top:0}code{background:#eef;padding:0 .3em;border-radius:4px}
.state{font-weight:600;padding:.6rem .8rem;border-radius:8px;background:#eee}
.state-connected{background:#d7f5df;color:#0b5d23}.state-qr,.state-starting{background:#fff4cf}
.state-logged_out,.state-failed,.state-qr_expired{background:#fde2e1;color:#8a1c14}
.sim{background:#8a1c14;color:#fff;padding:.3rem .6rem;border-radius:6px;font-size:.85rem}
#qr{display:block;width:18rem;height:18rem;margin:1rem auto}
.muted{color:#666;font-size:.9rem}a.button{display:inline-block;margin-top:1rem;padding:.5rem 1rem;
background:#128c4a;color:#fff;border-radius:6px;text-decoration:none}
"""

_SCRIPT = """
const user = document.body.dataset.user;
let shownQr = document.body.dataset.qr;
async function follow() {
  try {
    const answer = await fetch(`/sessions/${encodeURIComponent(user)}`, {cache: "no-store"});
    if (answer.ok) show(await answer.json());
  } catch (e) { document.getElementById("detail").textContent = "The API cannot be reached; retrying…"; }
  setTimeout(follow, 2000);
}
function show(status) {
  const state = document.getElementById("state");
  state.className = `state state-${status.state}`;
  state.textContent = WORDS[status.state] || status.state;
  document.getElementById("detail").textContent = status.detail || "";
  const qr = document.getElementById("qr");
  if (status.qr && status.qr !== shownQr) {
    qr.src = `/sessions/${encodeURIComponent(user)}/qr.svg?t=${Date.now()}`;
    shownQr = status.qr;
  }
  qr.hidden = !status.qr;
  window.expiresAt = status.qrExpiresAt ? Date.parse(status.qrExpiresAt) : null;
  document.getElementById("pair").hidden = status.state !== "qr";
  document.getElementById("code").textContent = status.pairCode || "";
}
function tick() {
  const left = window.expiresAt ? Math.max(0, Math.round((window.expiresAt - Date.now()) / 1000)) : null;
  document.getElementById("expires").textContent = left === null ? "" : `This code expires in ${left} s`;
}
async function pair(event) {
  event.preventDefault();
  const phone = document.getElementById("phone").value;
  const answer = await fetch(`/sessions/${encodeURIComponent(user)}/pair-phone`, {method: "POST",
    headers: {"content-type": "application/json"}, body: JSON.stringify({phone})});
  const body = await answer.json();
  document.getElementById("code").textContent = answer.ok ? "Waiting for the code…" : body.detail;
}
document.getElementById("pair").addEventListener("submit", pair);
setInterval(tick, 1000);
follow();
"""


# A page opened by its link: take the token out of the address bar (and of what is bookmarked or shared).
_FORGET_TOKEN = """
if (new URLSearchParams(location.search).has("token")) {
  const url = new URL(location.href); url.searchParams.delete("token"); history.replaceState(null, "", url);
}
"""


def _page(title: str, user_id: str, body: str, *, script: str = "", qr: str = "") -> Response[str]:
    html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{escape(title)} · zapgate</title><style>{_STYLE}</style>
{'<noscript><meta http-equiv="refresh" content="5"></noscript>' if script else ""}</head>
<body data-user="{escape(user_id)}" data-qr="{escape(qr)}"><main>{body}</main>
<script>{_FORGET_TOKEN}{f"const WORDS = {_words_js()};{script}" if script else ""}</script></body></html>"""
    return Response(
        html, media_type=MediaType.HTML, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    )


def _with_cookie(response: Response[str], principal: Principal, auth: Auth, request: Request) -> Response[str]:
    """A page opened by its link leaves a cookie for its account, so that its own requests work."""
    if principal.via == "link" and principal.user_id is not None:
        response.set_cookie(
            Cookie(
                key=COOKIE,
                value=auth.page_cookie(principal),
                max_age=COOKIE_TTL,
                path="/",
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
        )
    return response


def _words_js() -> str:
    import json

    return json.dumps(STATE_WORDS)


def _state_block(status: SessionStatus | None) -> str:
    state = status.state if status else "disconnected"
    detail = (status.detail if status else "This account has never been connected.") or ""
    sim = (
        '<p><span class="sim">SIMULATED WhatsApp: no real message leaves</span></p>'
        if (status and status.backend == "simulated")
        else ""
    )
    jid = f"<p class='muted'>Number: {escape(status.jid)}</p>" if status and status.jid else ""
    return (
        f"{sim}<p id='state' class='state state-{escape(state)}'>{escape(STATE_WORDS.get(state, state))}</p>"
        f"<p id='detail' class='muted'>{escape(detail)}</p>{jid}"
    )


class PageController(Controller):
    @get("/", sync_to_thread=True, media_type=MediaType.HTML, opt=documented(link=True))
    def status_page(
        self,
        request: Request,
        store: NamedDependency[ObjectStore],
        auth: NamedDependency[Auth],
        principal: NamedDependency[Principal],
        userId: FromQuery[str | None] = None,
    ) -> Response[str]:
        """Is this account connected?"""
        user_id = principal.require_user(check_user_id(userId))
        status = read_status(store, user_id)
        link = (
            ""
            if status and status.connected
            else (f"<a class='button' href='/connect?userId={escape(user_id)}'>Connect</a>")
        )
        body = f"<h1>WhatsApp account <code>{escape(user_id)}</code></h1>{_state_block(status)}{link}"
        return _with_cookie(_page(f"{user_id} status", user_id, body), principal, auth, request)

    @get("/connect", sync_to_thread=True, media_type=MediaType.HTML, opt=documented(link=True))
    def connect_page(
        self,
        request: Request,
        store: NamedDependency[ObjectStore],
        auth: NamedDependency[Auth],
        principal: NamedDependency[Principal],
        userId: FromQuery[str | None] = None,
    ) -> Response[str]:
        """Start the session if needed and show its QR code, following it as it rotates."""
        user_id = principal.require_user(check_user_id(userId))
        status = ensure_started(store, user_id)
        qr = (status.qr or "") if status and has_qr(status) else ""
        src = f"/sessions/{escape(user_id)}/qr.svg" if qr else ""
        body = f"""<h1>Connect <code>{escape(user_id)}</code></h1>{_state_block(status)}
<img id="qr" alt="QR code to scan with WhatsApp" src="{src}" {"" if qr else "hidden"}>
<p id="expires" class="muted"></p>
<form id="pair" {"" if qr else "hidden"}><p class="muted">No camera? Pair with your phone number instead:</p>
<input id="phone" name="phone" placeholder="5511999999999" inputmode="tel" required>
<button type="submit">Get a pairing code</button></form><p id="code" style="font-size:1.6rem"></p>"""
        return _with_cookie(_page(f"connect {user_id}", user_id, body, script=_SCRIPT, qr=qr), principal, auth, request)
