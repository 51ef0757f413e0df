"""The neonize backend, offline and without pairing.

Each test builds a real neonize ``NewClient`` on a temporary SQLite path and never connects it:
``NewClient.connect``/``stop`` are replaced for the whole module by a stand-in that blocks like the
real session until stopped. Events go in through neonize's own entry point, ``Event.execute`` (the
callback Go calls with ``(uuid, pointer, size, event code)``), carrying neonize's own protobuf
events, so neonize's decoding and dispatch run for real before our handlers do.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib.util
import io
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from session_host.whatsapp import (
    AuthChanged,
    Connected,
    Disconnected,
    LoggedOut,
    NotConnected,
    OutcomeUnknown,
    PairCode,
    QrCode,
    QrExpired,
    RateLimited,
    SendReceipt,
    SendRejected,
    StreamReplaced,
    TemporaryBan,
    WhatsAppError,
)
from session_host.whatsapp.neonize_client import (
    NeonizeBackend,
    NeonizeClient,
    classify_failure,
    load_neonize,
    readable_connect_error,
)
from session_host.whatsapp.snapshot import SnapshotFailed, snapshot_auth, snapshot_in_own_process

NewClient = load_neonize()  # before any other neonize import: keeps the root logger as it is

from neonize.events import EVENT_TO_INT  # noqa: E402
from neonize.exc import IsOnWhatsAppError, NeonizeError, SendMessageError  # noqa: E402
from neonize.proto import Neonize_pb2 as pb  # noqa: E402
from neonize.utils.enum import ChatPresence, Presence  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
JID_NUMBER = "5511999990000"


# -- fixtures ----------------------------------------------------------------------------------------


class Recorder:
    """The ``emit`` callback: keeps every event with the time it came."""

    def __init__(self) -> None:
        self.timed: list[tuple[float, Any]] = []
        self._condition = threading.Condition()

    def __call__(self, event: Any) -> None:
        with self._condition:
            self.timed.append((time.monotonic(), event))
            self._condition.notify_all()

    @property
    def events(self) -> list[Any]:
        with self._condition:
            return [event for _, event in self.timed]

    def wait_for(self, kind: type, timeout: float = 5.0) -> Any:
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                for _, event in self.timed:
                    if isinstance(event, kind):
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {kind.__name__} within {timeout} s; got {self.events}")
                self._condition.wait(left)


class FakeGo:
    """Stands in for neonize's blocking ``connect`` and its ``stop``: no network, ever."""

    def __init__(self) -> None:
        self.stopped: list[bytes] = []
        self._released: dict[bytes, threading.Event] = {}
        self._lock = threading.Lock()

    def _event(self, client: Any) -> threading.Event:
        with self._lock:
            return self._released.setdefault(client.uuid, threading.Event())

    def connect(self, client: Any, proxy_settings: Any = None) -> None:
        self._event(client).wait(30)

    def stop(self, client: Any) -> None:
        self.stopped.append(client.uuid)
        self._event(client).set()


@pytest.fixture(autouse=True)
def fake_go(monkeypatch: pytest.MonkeyPatch) -> FakeGo:
    fake = FakeGo()
    monkeypatch.setattr(NewClient, "connect", lambda client, proxy_settings=None: fake.connect(client))
    monkeypatch.setattr(NewClient, "stop", lambda client: fake.stop(client))
    return fake


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def make_client(tmp_path: Path, recorder: Recorder) -> Iterator[Callable[..., NeonizeClient]]:
    made: list[NeonizeClient] = []

    def make(**timings: float) -> NeonizeClient:
        settings = {"qr_first_timeout": 5.0, "qr_next_timeout": 5.0, "qr_grace": 1.0, "pair_wait": 0.2} | timings
        client = NeonizeClient("u1", str(tmp_path / "u1" / "auth.db"), recorder, **settings)
        made.append(client)
        return client

    yield make
    for client in made:
        asyncio.run(client.stop())


class GoState:
    """What neonize's ``is_connected``/``is_logged_in`` report, for tests of a live session."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.connected = False
        self.logged_in = False
        monkeypatch.setattr(NewClient, "is_connected", property(lambda _client: self.connected))
        monkeypatch.setattr(NewClient, "is_logged_in", property(lambda _client: self.logged_in))


@pytest.fixture
def go_state(monkeypatch: pytest.MonkeyPatch) -> GoState:
    return GoState(monkeypatch)


class Spy:
    """Replaces neonize calls on one client, recording them instead of reaching Go."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def replace(self, name: str, result: Callable[..., Any] | None = None) -> None:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args))
            if result is None:
                raise AssertionError(f"{name} reached neonize")
            return result(*args, **kwargs)

        setattr(self.client, name, call)


def dispatch(client: NeonizeClient, message: Any) -> None:
    """Deliver ``message`` the way Go does: serialized, by address, through ``Event.execute``."""
    data = message.SerializeToString()
    buffer = ctypes.create_string_buffer(data, max(len(data), 1))
    client.neonize_client.event.execute(0, ctypes.addressof(buffer), len(data), EVENT_TO_INT[type(message)])


def qr_code(client: NeonizeClient, payload: str) -> None:
    """Hand one QR code to the client the way Go does: a C string, through neonize's per-code entry."""
    buffer = ctypes.create_string_buffer(payload.encode())
    client.neonize_client._NewClient__onQr(0, ctypes.addressof(buffer))


def start(client: NeonizeClient) -> None:
    asyncio.run(client.start())
    assert client.running


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def phone_jid(user: str, device: int = 0) -> Any:
    return pb.JID(User=user, Server="s.whatsapp.net", Device=device, RawAgent=0, Integrator=0, IsEmpty=False)


# -- importing -----------------------------------------------------------------------------------------


def test_neonize_is_imported_lazily_and_the_root_logger_survives_it() -> None:
    script = (
        "import logging, sys\n"
        "root = logging.getLogger(); root.handlers.clear(); root.setLevel(logging.WARNING)\n"
        "import session_host.whatsapp.neonize_client as module\n"
        "print('neonize' in sys.modules)\n"
        "module.load_neonize()\n"
        "print('neonize.client' in sys.modules, len(root.handlers), root.level)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.split() == ["False", "True", "0", "30"]


def test_backend_makes_clients_with_its_timings(tmp_path: Path, recorder: Recorder) -> None:
    backend = NeonizeBackend(qr_first_timeout=1.5, qr_next_timeout=0.5, pair_wait=2.0)
    client = backend.new_client("u7", str(tmp_path / "auth.db"), recorder)
    assert (backend.name, backend.honours_message_ids) == ("neonize", False)
    assert isinstance(client, NeonizeClient)
    assert (client._qr_first_timeout, client._qr_next_timeout, client._pair_wait) == (1.5, 0.5, 2.0)
    assert isinstance(client.neonize_client, NewClient)
    assert client.neonize_client.name == str(tmp_path / "auth.db")  # neonize's SQLite path


# -- QR codes and pairing ------------------------------------------------------------------------------


def test_qr_codes_come_one_at_a_time_then_expire_and_the_client_stops(
    make_client: Callable[..., NeonizeClient], recorder: Recorder, fake_go: FakeGo
) -> None:
    client = make_client(qr_first_timeout=0.3, qr_next_timeout=0.15, qr_grace=0.1)
    start(client)
    qr_code(client, "code-1")  # as whatsmeow rotates them: each code when the last one's time is up
    time.sleep(0.3)
    qr_code(client, "code-2")
    last = time.monotonic()
    qr_code(client, "code-3")  # the last: nothing comes after it
    recorder.wait_for(QrExpired)

    assert recorder.events == [
        QrCode(code="code-1", timeout=0.3, index=1, total=6),
        QrCode(code="code-2", timeout=0.15, index=2, total=6),
        QrCode(code="code-3", timeout=0.15, index=3, total=6),
        QrExpired(),
    ]
    expired_at = recorder.timed[-1][0]
    assert expired_at - last >= 0.15 + 0.1  # the last code's time, and the grace
    wait_until(lambda: fake_go.stopped == [client.neonize_client.uuid])
    assert not client.running


def test_a_code_that_comes_in_time_keeps_the_pairing_open(
    make_client: Callable[..., NeonizeClient], recorder: Recorder
) -> None:
    client = make_client(qr_first_timeout=0.2, qr_next_timeout=0.2, qr_grace=0.1)
    start(client)
    for n in range(1, 5):  # each within the previous one's time: never expired
        qr_code(client, f"code-{n}")
        time.sleep(0.2)
    assert [type(e) for e in recorder.events] == [QrCode] * 4
    assert client.running


def test_pairing_stops_the_qr_codes_and_the_restart_shows_none(
    make_client: Callable[..., NeonizeClient], recorder: Recorder, fake_go: FakeGo
) -> None:
    client = make_client(qr_first_timeout=0.2, qr_next_timeout=0.1, qr_grace=0.05)
    start(client)
    qr_code(client, "code-1")
    recorder.wait_for(QrCode)
    # neonize's Go side drains its events only once the QR loop is over: the QR batch event comes
    # first, then the pairing, then whatsmeow's restart with the new credentials.
    dispatch(client, pb.QR(Codes=["code-1", "code-2", "code-3"]))
    dispatch(
        client,
        pb.PairStatus(
            Status=pb.PairStatus.SUCCESS, ID=phone_jid(JID_NUMBER, device=7), BusinessName="", Platform="android"
        ),
    )
    qr_code(client, "late-code")  # a code that crossed the pairing
    dispatch(client, pb.Connected(status=True))
    time.sleep(0.6)  # longer than the codes' time and the grace

    assert recorder.events == [
        QrCode(code="code-1", timeout=0.2, index=1, total=6),
        AuthChanged(),
        Connected(jid=f"{JID_NUMBER}@s.whatsapp.net"),
        AuthChanged(),
    ]
    dispatch(client, pb.Connected(status=True))  # a later reconnect: no second AuthChanged
    assert recorder.events[-1] == Connected(jid=f"{JID_NUMBER}@s.whatsapp.net")
    assert len(recorder.events) == 5
    assert client.running and fake_go.stopped == []


def test_connected_takes_the_jid_from_neonizes_device_event(
    make_client: Callable[..., NeonizeClient], recorder: Recorder
) -> None:
    client = make_client()
    start(client)
    dispatch(
        client,
        pb.Device(
            JID=phone_jid("5521988887777", device=3),
            Platform="android",
            BussinessName="",
            PushName="Ana",
            Initialized=True,
        ),
    )
    dispatch(client, pb.Connected(status=True))
    assert recorder.events == [Connected(jid="5521988887777@s.whatsapp.net"), AuthChanged()]


def test_neonizes_per_code_qr_callback_prints_nothing_and_shows_the_code(
    make_client: Callable[..., NeonizeClient], recorder: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    client = make_client()
    start(client)
    qr_code(client, "2@secret-qr-payload")  # Go's entry for single codes
    assert capsys.readouterr().out == ""  # neonize's default draws the QR on the terminal
    assert recorder.events == [QrCode(code="2@secret-qr-payload", timeout=5.0, index=1, total=6)]
    assert client._first_qr.is_set()


def test_pair_phone_waits_for_the_first_qr_then_returns_the_code(
    make_client: Callable[..., NeonizeClient], recorder: Recorder, go_state: GoState
) -> None:
    client = make_client(pair_wait=5.0)
    start(client)
    go_state.connected = True  # connected, waiting to be paired
    spy = Spy(client.neonize_client)
    spy.replace("PairPhone", lambda *args, **kwargs: "ABCD-EFGH")

    async def scenario() -> str:
        task = asyncio.create_task(client.pair_phone("+55 11 99999-0000"))
        await asyncio.sleep(0.3)
        assert not task.done() and spy.calls == []  # no QR yet: must not call PairPhone
        qr_code(client, "code-1")
        return await asyncio.wait_for(task, 5)

    assert asyncio.run(scenario()) == "ABCD-EFGH"
    assert spy.calls == [("PairPhone", (JID_NUMBER, True))]
    assert recorder.events[-1] == PairCode(code="ABCD-EFGH")


def test_pair_phone_gives_up_when_no_qr_comes(make_client: Callable[..., NeonizeClient], go_state: GoState) -> None:
    client = make_client(pair_wait=0.2)
    start(client)
    go_state.connected = True
    spy = Spy(client.neonize_client)
    spy.replace("PairPhone")
    began = time.monotonic()
    with pytest.raises(NotConnected, match="no QR"):
        asyncio.run(client.pair_phone(JID_NUMBER))
    assert 0.2 <= time.monotonic() - began < 2
    assert spy.calls == []


# -- the other events ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            pb.LoggedOut(OnConnect=True, Reason=pb.ConnectFailureReason.LOGGED_OUT),
            LoggedOut(reason="the device was logged out (unlinked on the phone?)"),
        ),
        (pb.StreamReplaced(), StreamReplaced()),
        (
            pb.TemporaryBan(Code=pb.TemporaryBan.SEND_TO_TOO_MANY_PEOPLE, Expire=3600),
            TemporaryBan(reason="sent to too many people who do not have this number saved", expires_in=3600.0),
        ),
        (
            pb.ConnectFailure(Reason=pb.ConnectFailureReason.MAIN_DEVICE_GONE, Message="", Raw=pb.Node(Tag="failure")),
            LoggedOut(reason="the phone's WhatsApp account is gone"),
        ),
        (
            pb.ConnectFailure(
                Reason=pb.ConnectFailureReason.BAD_USER_AGENT, Message="bad ua", Raw=pb.Node(Tag="failure")
            ),
            Disconnected(
                reason="WhatsApp refused the connection: WhatsApp rejected the client's user agent: bad ua",
                final=True,
            ),
        ),
        (
            pb.ClientOutdated(),
            Disconnected(reason="WhatsApp rejects this client version as outdated; update neonize", final=True),
        ),
        (
            pb.PairStatus(
                Status=pb.PairStatus.ERROR, Error="bad signature", ID=phone_jid(""), BusinessName="", Platform=""
            ),
            Disconnected(reason="pairing failed: bad signature", final=True),
        ),
    ],
    ids=["logged-out", "stream-replaced", "temporary-ban", "device-gone", "refused", "outdated", "pair-error"],
)
def test_events_that_end_the_session_are_reported_once_and_stop_the_client(
    make_client: Callable[..., NeonizeClient], recorder: Recorder, fake_go: FakeGo, message: Any, expected: Any
) -> None:
    client = make_client()
    start(client)
    dispatch(client, message)
    dispatch(client, message)
    dispatch(client, pb.Disconnected(status=True))  # the socket closing afterwards is no news
    assert recorder.events == [expected]
    wait_until(lambda: fake_go.stopped == [client.neonize_client.uuid])
    assert not client.running


def test_a_dropped_connection_is_not_final_and_the_client_keeps_running(
    make_client: Callable[..., NeonizeClient], recorder: Recorder, fake_go: FakeGo
) -> None:
    client = make_client()
    start(client)
    dispatch(client, pb.Disconnected(status=True))
    assert recorder.events == [Disconnected(reason="connection lost; reconnecting", final=False)]
    assert client.running and fake_go.stopped == []


def test_a_failed_connect_ends_with_a_readable_final_disconnect(
    make_client: Callable[..., NeonizeClient], recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(_client: Any, proxy_settings: Any = None) -> None:
        raise NeonizeError(
            "failed to dial whatsapp web websocket: failed to WebSocket dial: failed to send handshake request: "
            'Get "https://web.whatsapp.com/ws/chat": dial tcp: lookup web.whatsapp.com on 10.0.0.53:53: no such host'
        )

    monkeypatch.setattr(NewClient, "connect", offline)
    client = make_client()
    asyncio.run(client.start())
    event = recorder.wait_for(Disconnected)
    assert event == Disconnected(reason="cannot resolve WhatsApp's address (offline, or DNS is failing)", final=True)
    wait_until(lambda: not client.running)


def test_stop_is_idempotent_and_a_restart_uses_a_fresh_neonize_client(
    make_client: Callable[..., NeonizeClient], fake_go: FakeGo
) -> None:
    client = make_client()
    start(client)
    first = client.neonize_client
    asyncio.run(client.stop())
    asyncio.run(client.stop())
    assert fake_go.stopped == [first.uuid] and not client.running
    start(client)
    assert client.neonize_client is not first and client.neonize_client.uuid != first.uuid
    dispatch(client, pb.Connected(status=True))  # handlers are registered on the new one
    assert client.running


# -- calls that need a session -----------------------------------------------------------------------------

_GUARDED = (
    "send_message",
    "build_image_message",
    "upload",
    "is_on_whatsapp",
    "send_chat_presence",
    "logout",
    "get_me",
    "get_pn_from_lid",
    "PairPhone",
)


@pytest.mark.parametrize("started", [False, True], ids=["never-started", "started-not-logged-in"])
def test_calls_needing_a_session_raise_not_connected_without_calling_neonize(
    make_client: Callable[..., NeonizeClient], started: bool
) -> None:
    client = make_client(pair_wait=0.1)
    if started:
        start(client)  # neonize itself reports not connected, not logged in (nothing connected in Go)
    spy = Spy(client.neonize_client)
    for name in _GUARDED:
        spy.replace(name)
    jid = f"{JID_NUMBER}@s.whatsapp.net"
    calls = [
        client.send_text(jid, "hi", "m1"),
        client.send_image(jid, b"\x89PNG", "image/png", "hi", "m2"),
        client.lookup([JID_NUMBER]),
        client.typing(jid, 0.01),
        client.logout(),
        client.pair_phone(JID_NUMBER),
    ]
    for call in calls:
        with pytest.raises(NotConnected):
            asyncio.run(call)
    assert spy.calls == []


def test_connected_but_not_paired_is_still_not_connected_for_sending(
    make_client: Callable[..., NeonizeClient], go_state: GoState
) -> None:
    client = make_client()
    start(client)
    go_state.connected = True  # showing QR codes: connected, not logged in
    spy = Spy(client.neonize_client)
    spy.replace("send_message")
    with pytest.raises(NotConnected, match="not logged in"):
        asyncio.run(client.send_text(f"{JID_NUMBER}@s.whatsapp.net", "hi", "m1"))
    assert spy.calls == []


# -- sending ------------------------------------------------------------------------------------------------


@pytest.fixture
def live(make_client: Callable[..., NeonizeClient], go_state: GoState) -> tuple[NeonizeClient, Spy, GoState]:
    client = make_client()
    start(client)
    go_state.connected = go_state.logged_in = True
    return client, Spy(client.neonize_client), go_state


def test_send_text_sends_a_plain_message_and_returns_whatsapps_receipt(
    live: tuple[NeonizeClient, Spy, GoState],
) -> None:
    client, spy, _ = live
    spy.replace("send_message", lambda to, message: pb.SendResponse(ID="3EB0AAA", Timestamp=1_700_000_000))
    receipt = asyncio.run(client.send_text(f"{JID_NUMBER}@s.whatsapp.net", "olá @5511", "our-id"))
    assert receipt == SendReceipt(message_id="3EB0AAA", timestamp=1_700_000_000.0)
    [(_, (to, message))] = spy.calls
    assert (to.User, to.Server, to.Device) == (JID_NUMBER, "s.whatsapp.net", 0)
    assert message.conversation == "olá @5511" and not message.HasField("extendedTextMessage")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("info query returned status 429: rate-overlimit", RateLimited),
        ("timed out waiting for message send response", OutcomeUnknown),
        ("message send was interrupted by websocket disconnection", OutcomeUnknown),
        ("websocket not connected", NotConnected),
        ("server returned error 479", SendRejected),
    ],
)
def test_send_errors_map_to_the_boundarys_errors(
    live: tuple[NeonizeClient, Spy, GoState], error: str, expected: type
) -> None:
    client, spy, _ = live

    def fail(to: Any, message: Any) -> Any:
        raise SendMessageError(error)

    spy.replace("send_message", fail)
    with pytest.raises(expected):
        asyncio.run(client.send_text(f"{JID_NUMBER}@s.whatsapp.net", "hi", "m1"))


def test_an_unknown_error_while_the_link_breaks_is_an_unknown_outcome(
    live: tuple[NeonizeClient, Spy, GoState],
) -> None:
    client, spy, state = live

    def break_link(to: Any, message: Any) -> Any:
        state.connected = False
        raise SendMessageError("write tcp: broken pipe")

    spy.replace("send_message", break_link)
    with pytest.raises(OutcomeUnknown, match="connection broke"):
        asyncio.run(client.send_text(f"{JID_NUMBER}@s.whatsapp.net", "hi", "m1"))


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_send_image_uploads_the_bytes_and_sends_an_image_message(live: tuple[NeonizeClient, Spy, GoState]) -> None:
    client, spy, _ = live
    image = _png()
    spy.replace(
        "upload",
        lambda data, media_type=None: pb.UploadResponse(
            url="https://mmg.whatsapp.net/x", DirectPath="/v/x", FileLength=len(data)
        ),
    )
    spy.replace("send_message", lambda to, message: pb.SendResponse(ID="3EB0BBB", Timestamp=1_700_000_001))

    receipt = asyncio.run(client.send_image(f"{JID_NUMBER}@s.whatsapp.net", image, "image/png", "look", "m9"))

    assert receipt.message_id == "3EB0BBB"
    (upload_name, (uploaded, *_)), (_, (_, message)) = spy.calls
    assert upload_name == "upload" and uploaded == image
    sent = message.imageMessage
    assert (sent.caption, sent.mimetype, sent.URL, sent.fileLength) == (
        "look",
        "image/png",
        "https://mmg.whatsapp.net/x",
        len(image),
    )
    assert sent.JPEGThumbnail.startswith(b"\xff\xd8")


def test_send_image_takes_only_bytes_and_rejects_unreadable_images(live: tuple[NeonizeClient, Spy, GoState]) -> None:
    client, spy, _ = live
    spy.replace("upload")
    spy.replace("send_message")
    jid = f"{JID_NUMBER}@s.whatsapp.net"
    with pytest.raises(TypeError):
        asyncio.run(client.send_image(jid, "https://example.com/a.png", "image/png", "", "m1"))  # type: ignore[arg-type]
    with pytest.raises(SendRejected, match="not a readable image"):
        asyncio.run(client.send_image(jid, b"not an image", "image/png", "", "m2"))
    assert spy.calls == []


# -- lookup, typing, logout -------------------------------------------------------------------------------------


def test_lookup_returns_the_jid_whatsapp_has_for_each_number(live: tuple[NeonizeClient, Spy, GoState]) -> None:
    client, spy, _ = live
    answers = [
        # WhatsApp knows this old Brazilian account without the 9th digit: keep its answer as it is.
        pb.IsOnWhatsAppResponse(Query="+5511987654321", IsIn=True, JID=phone_jid("551187654321")),
        pb.IsOnWhatsAppResponse(Query="+5511911112222", IsIn=False, JID=phone_jid("5511911112222")),
        pb.IsOnWhatsAppResponse(Query="+5521999998888", IsIn=True, JID=pb.JID(User="123456789012345", Server="lid")),
    ]
    spy.replace("is_on_whatsapp", lambda *numbers: answers)
    spy.replace("get_pn_from_lid", lambda lid: phone_jid("5521999998888"))

    found = asyncio.run(client.lookup(["5511987654321", "5511911112222", "+55 21 99999-8888", "4915112345678"]))

    assert found == {
        "5511987654321": "551187654321@s.whatsapp.net",
        "5511911112222": None,
        "+55 21 99999-8888": "5521999998888@s.whatsapp.net",
        "4915112345678": None,
    }
    lookup_call, lid_call = spy.calls
    assert lookup_call == ("is_on_whatsapp", ("+4915112345678", "+5511911112222", "+5511987654321", "+5521999998888"))
    assert lid_call[0] == "get_pn_from_lid" and lid_call[1][0].User == "123456789012345"


def test_lookup_errors_are_retryable(live: tuple[NeonizeClient, Spy, GoState]) -> None:
    client, spy, _ = live

    def fail(*numbers: str) -> Any:
        raise IsOnWhatsAppError("info query timed out")

    spy.replace("is_on_whatsapp", fail)
    with pytest.raises(NotConnected):
        asyncio.run(client.lookup([JID_NUMBER]))


def test_a_lookup_answered_with_no_entry_means_no_account(live: tuple[NeonizeClient, Spy, GoState]) -> None:
    client, spy, _ = live

    def nothing(*numbers: str) -> Any:
        raise IsOnWhatsAppError("Function returned nothing.")  # Go's IsOnWhatsApp on an empty answer

    spy.replace("is_on_whatsapp", nothing)
    assert asyncio.run(client.lookup(["5511900000099"])) == {"5511900000099": None}


def test_an_unknown_lookup_error_is_a_passing_failure_not_a_wait_for_the_session(
    live: tuple[NeonizeClient, Spy, GoState],
) -> None:
    client, spy, _ = live

    def odd(*numbers: str) -> Any:
        raise IsOnWhatsAppError("server returned error 500")

    spy.replace("is_on_whatsapp", odd)
    with pytest.raises(WhatsAppError) as caught:
        asyncio.run(client.lookup([JID_NUMBER]))
    assert not isinstance(caught.value, NotConnected) and "number lookup failed" in str(caught.value)


def test_typing_composes_waits_then_pauses(live: tuple[NeonizeClient, Spy, GoState]) -> None:
    client, spy, _ = live
    spy.replace("send_presence", lambda presence: None)
    spy.replace("send_chat_presence", lambda jid, state, media: (time.monotonic(), state))
    began = time.monotonic()
    asyncio.run(client.typing(f"{JID_NUMBER}@s.whatsapp.net", 0.2))
    assert spy.calls[0] == ("send_presence", (Presence.AVAILABLE,))  # online first, once a connection
    states = [args[1] for name, args in spy.calls[1:]]
    assert states == [ChatPresence.CHAT_PRESENCE_COMPOSING, ChatPresence.CHAT_PRESENCE_PAUSED]
    assert time.monotonic() - began >= 0.2
    assert spy.calls[1][1][0].User == JID_NUMBER
    asyncio.run(client.typing(f"{JID_NUMBER}@s.whatsapp.net", 0.01))
    assert [name for name, _ in spy.calls].count("send_presence") == 1


def test_logout_unlinks_forgets_the_file_and_reports_once(
    live: tuple[NeonizeClient, Spy, GoState], recorder: Recorder, fake_go: FakeGo
) -> None:
    client, spy, _ = live
    Path(client.auth_path).write_bytes(b"credentials")
    spy.replace("logout", lambda: None)
    asyncio.run(client.logout())
    # whatsmeow may report the logout as well: still one LoggedOut
    dispatch(client, pb.LoggedOut(OnConnect=False, Reason=pb.ConnectFailureReason.LOGGED_OUT))
    assert spy.calls == [("logout", ())]
    assert recorder.events == [LoggedOut(reason="logged out")]
    assert not Path(client.auth_path).exists()
    assert fake_go.stopped == [client.neonize_client.uuid] and not client.running


# -- credentials snapshot ---------------------------------------------------------------------------------------


def _credentials_db(path: Path, *, wal: bool = False) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    if wal:
        db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE whatsmeow_device (jid TEXT PRIMARY KEY, push_name TEXT)")
    db.execute("CREATE TABLE whatsmeow_sessions (their_id TEXT, session BLOB)")
    db.execute("INSERT INTO whatsmeow_device VALUES (?, ?)", (f"{JID_NUMBER}.0:7@s.whatsapp.net", "Ana"))
    db.executemany("INSERT INTO whatsmeow_sessions VALUES (?, ?)", [(f"peer{i}", bytes([i]) * 64) for i in range(50)])
    db.commit()
    return db


def _rows(data: bytes, tmp_path: Path) -> tuple[list[Any], list[Any]]:
    copy = tmp_path / "restored.db"
    copy.write_bytes(data)
    db = sqlite3.connect(copy)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return (
            db.execute("SELECT * FROM whatsmeow_device").fetchall(),
            db.execute("SELECT * FROM whatsmeow_sessions ORDER BY their_id").fetchall(),
        )
    finally:
        db.close()


def test_export_auth_is_a_valid_sqlite_snapshot_with_the_same_rows(
    make_client: Callable[..., NeonizeClient], tmp_path: Path
) -> None:
    client = make_client()
    auth = Path(client.auth_path)
    auth.parent.mkdir(parents=True)
    _credentials_db(auth).close()
    data = asyncio.run(client.export_auth())
    assert data is not None and data.startswith(b"SQLite format 3\x00")
    device, sessions = _rows(data, tmp_path)
    assert device == [(f"{JID_NUMBER}.0:7@s.whatsapp.net", "Ana")]
    assert sessions == sorted((f"peer{i}", bytes([i]) * 64) for i in range(50))
    assert sorted(p.name for p in auth.parent.iterdir()) == ["auth.db"]  # the temporary copy is gone


def test_export_auth_includes_what_is_committed_but_still_in_the_wal(tmp_path: Path) -> None:
    auth = tmp_path / "auth.db"
    writer = _credentials_db(auth, wal=True)  # stays open: nothing is checkpointed into auth.db
    try:
        writer.execute("INSERT INTO whatsmeow_sessions VALUES ('late', x'00')")
        writer.commit()
        assert (tmp_path / "auth.db-wal").stat().st_size > 0
        data = snapshot_in_own_process(str(auth))
    finally:
        writer.close()
    assert data is not None
    _, sessions = _rows(data, tmp_path)
    assert ("late", b"\x00") in sessions and len(sessions) == 51


def test_export_auth_is_none_without_a_file_or_a_paired_device(
    make_client: Callable[..., NeonizeClient], tmp_path: Path
) -> None:
    client = make_client()
    assert asyncio.run(client.export_auth()) is None  # no file
    unpaired = tmp_path / "unpaired.db"
    db = sqlite3.connect(unpaired)
    db.execute("CREATE TABLE whatsmeow_device (jid TEXT PRIMARY KEY)")
    db.commit()
    db.close()
    assert snapshot_auth(str(unpaired)) is None
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    assert snapshot_auth(str(empty)) is None


def test_a_snapshot_taken_while_neonizes_own_sqlite_writes_is_never_torn(tmp_path: Path) -> None:
    """neonize's library carries its own SQLite: whatsmeow's writes go through it, here through its C
    functions from a thread of this process, as in a worker. Each transaction keeps sum(a) + sum(b)
    at 0; a snapshot that mixes pages of two transactions breaks that (Python's SQLite in the same
    process tore about half of them)."""
    library = ctypes.CDLL(str(Path(importlib.util.find_spec("neonize").origin).parent / "neonize-linux-amd64.so"))
    library.sqlite3_open_v2.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_char_p]
    library.sqlite3_exec.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    path = tmp_path / "auth.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE whatsmeow_device (jid TEXT)")
    db.execute("INSERT INTO whatsmeow_device VALUES ('x')")
    for table in "ab":
        db.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, v INT, pad BLOB)")
        db.executemany(f"INSERT INTO {table} VALUES (?, 0, zeroblob(3000))", [(i,) for i in range(300)])
    db.commit()
    db.close()
    go_side = ctypes.c_void_p()
    assert library.sqlite3_open_v2(str(path).encode(), ctypes.byref(go_side), 6, None) == 0
    stop = threading.Event()

    def whatsmeow() -> None:
        step = b"BEGIN; UPDATE a SET v=v+1 WHERE id IN (0,299); UPDATE b SET v=v-1 WHERE id IN (0,299); COMMIT;"
        while not stop.is_set():
            if library.sqlite3_exec(go_side, step, None, None, None):
                library.sqlite3_exec(go_side, b"ROLLBACK", None, None, None)

    writer = threading.Thread(target=whatsmeow)
    writer.start()
    sums = []
    try:
        for _ in range(20):
            data = snapshot_in_own_process(str(path))
            assert data is not None
            copy = tmp_path / "copy.db"
            copy.write_bytes(data)
            check = sqlite3.connect(copy)
            sums.append(check.execute("SELECT (SELECT sum(v) FROM a) + (SELECT sum(v) FROM b)").fetchone()[0])
            check.close()
    finally:
        stop.set()
        writer.join()
    assert sums == [0] * 20


def test_a_snapshot_that_cannot_be_read_fails_loudly_instead_of_reading_as_unpaired(tmp_path: Path) -> None:
    broken = tmp_path / "auth.db"
    broken.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4096)  # a header, then garbage
    with pytest.raises(SnapshotFailed, match="DatabaseError"):
        snapshot_in_own_process(str(broken))
    assert snapshot_in_own_process(str(tmp_path / "missing.db")) is None


# -- reading neonize's errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "connected", "after_send", "expected"),
    [
        ("rate-overlimit", True, True, RateLimited),
        ("info query returned status 429", True, False, RateLimited),
        ("websocket disconnected before message send returned response", False, True, OutcomeUnknown),
        ("failed to get device list: info query timed out", True, True, NotConnected),
        ("client is nil", False, True, NotConnected),
        ("something else", False, True, OutcomeUnknown),
        ("something else", False, False, NotConnected),
        ("server returned error 463", True, True, SendRejected),
        ("user 554299999429 blocked", True, True, SendRejected),  # 429 inside a number is no rate limit
    ],
)
def test_classify_failure(text: str, connected: bool, after_send: bool, expected: type) -> None:
    failure = classify_failure(text, still_connected=connected, after_send=after_send)
    assert type(failure) is expected
    if isinstance(failure, RateLimited):
        assert failure.retry_after > 0


def test_readable_connect_errors() -> None:
    assert readable_connect_error("dial tcp: i/o timeout") == (
        "timed out connecting to WhatsApp (the network drops the traffic)"
    )
    assert readable_connect_error("dial tcp 1.2.3.4:443: connect: connection refused").startswith("the connection")
    assert readable_connect_error(
        "failed to upgrade database: unable to open database file: no such file or directory"
    ).startswith("cannot use the credentials file")
    assert readable_connect_error("weird") == "cannot connect to WhatsApp: weird"


def test_a_process_that_never_stops_its_clients_still_exits(tmp_path: Path) -> None:
    # neonize's connect() blocks in a non-daemon thread until stopped; the interpreter would wait
    # for it forever at exit unless the client is stopped first.
    script = f"""
import asyncio, threading
from session_host.whatsapp.neonize_client import NeonizeClient, load_neonize
NewClient = load_neonize()
released = threading.Event()
def connect(self, proxy_settings=None):
    worker = threading.Thread(target=released.wait, daemon=False)
    worker.start()
    worker.join()
NewClient.connect = connect
NewClient.stop = lambda self: released.set()
client = NeonizeClient("u1", {str(tmp_path / "auth.db")!r}, print)
asyncio.run(client.start())
print("started", client.running)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["started", "True"]
