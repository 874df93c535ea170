"""Drives webhookd with the official Svix Python SDK and verifies every delivery
with the Standard Webhooks library.

Run by tests/sdk.rs against a webhookd it started: WEBHOOKD_URL and
WEBHOOKD_TOKEN say where. Starts its own receiver on 127.0.0.1. Exits non-zero
(with a traceback) on the first failed check; prints "N passed, 0 failed".
"""

import os
import queue
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook
from svix.api import (
    ApplicationIn,
    EndpointIn,
    MessageAttemptListByEndpointOptions,
    MessageIn,
    MessageListOptions,
    RecoverIn,
    Svix,
    SvixOptions,
)
from svix.exceptions import HttpError

DEADLINE_S = 15


class Receiver:
    """A webhook receiver on 127.0.0.1:0 that answers `status` and queues arrivals."""

    def __init__(self):
        self.status = 200
        self.arrivals = queue.Queue()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status = receiver.status
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
                receiver.arrivals.put((status, headers, body))

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def next(self):
        return self.arrivals.get(timeout=DEADLINE_S)


def wait_for(what, check):
    """Polls `check` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def main():
    passed = 0

    def ok(name):
        nonlocal passed
        passed += 1
        print(f"ok - {name}", flush=True)

    svix = Svix(os.environ["WEBHOOKD_TOKEN"], SvixOptions(server_url=os.environ["WEBHOOKD_URL"]))
    receiver = Receiver()

    app = svix.application.create(ApplicationIn(name="SDK app", uid="sdk-app"))
    assert app.id.startswith("app_") and app.uid == "sdk-app"
    ok("application.create")

    ep = svix.endpoint.create(app.id, EndpointIn(url=receiver.url, event_types=["user.signup"]))
    assert ep.id.startswith("ep_")
    ok("endpoint.create")

    secret = svix.endpoint.get_secret(app.id, ep.id).key
    assert secret.startswith("whsec_")
    ok("endpoint.get_secret")

    payload = {"username": "test_user", "emoji": "\u2764", "nested": {"list": [1, 2.5, None]}}
    msg = svix.message.create(app.id, MessageIn(event_type="user.signup", payload=payload, event_id="evt-1"))
    assert msg.id.startswith("msg_") and msg.event_type == "user.signup"
    ok("message.create")

    status, headers, body = receiver.next()
    verified = Webhook(secret).verify(body, headers)
    assert verified == payload, verified
    assert headers["webhook-id"] == msg.id
    ok("delivery verifies with standardwebhooks")

    try:
        svix.message.create(app.id, MessageIn(event_type="user.signup", payload={}, event_id="evt-1"))
        raise AssertionError("a duplicate eventId was accepted")
    except HttpError as e:
        assert e.status_code == 409, e.status_code
    ok("duplicate eventId is a 409 HttpError")

    msgs = svix.message.list(app.id, MessageListOptions(limit=10))
    assert [m.id for m in msgs.data] == [msg.id] and msgs.done
    ok("message.list")

    by_msg = wait_for("the attempt", lambda: svix.message_attempt.list_by_msg(app.id, msg.id).data)
    assert by_msg[0].response_status_code == 200 and by_msg[0].endpoint_id == ep.id
    by_ep = svix.message_attempt.list_by_endpoint(app.id, ep.id, MessageAttemptListByEndpointOptions(limit=10))
    assert [a.id for a in by_ep.data] == [by_msg[0].id]
    ok("message_attempt.list_by_msg / list_by_endpoint")

    svix.message_attempt.resend(app.id, msg.id, ep.id)
    status, headers, body = receiver.next()
    assert Webhook(secret).verify(body, headers) == payload
    assert headers["webhook-id"] == msg.id
    attempts = wait_for(
        "the manual attempt",
        lambda: [a for a in svix.message_attempt.list_by_msg(app.id, msg.id).data if int(a.trigger_type) == 1],
    )
    assert len(attempts) == 1
    ok("message_attempt.resend")

    assert svix.message_attempt.get(app.id, msg.id, attempts[0].id).response == "ok"
    svix.message_attempt.expunge_content(app.id, msg.id, attempts[0].id)
    assert svix.message_attempt.get(app.id, msg.id, attempts[0].id).response == ""
    assert svix.message_attempt.get(app.id, msg.id, by_msg[0].id).response == "ok"
    ok("message_attempt.expunge_content")

    # A message that fails every attempt, then comes back through recover.
    since = datetime.now(timezone.utc) - timedelta(seconds=5)
    receiver.status = 500
    failing = svix.message.create(app.id, MessageIn(event_type="user.signup", payload={"n": 2}))
    for _ in range(3):  # the first attempt and two retries (the test's schedule)
        status, _, _ = receiver.next()
        assert status == 500

    def failed():
        attempts = svix.message_attempt.list_by_msg(app.id, failing.id).data
        dests = svix.message_attempt.list_attempted_destinations(app.id, failing.id).data
        return len(attempts) == 3 and dests and int(dests[0].status) == 2

    wait_for("the message to be marked failed", failed)
    receiver.status = 200
    task = svix.endpoint.recover(app.id, ep.id, RecoverIn(since=since))
    assert task.id.startswith("qtask_")
    status, headers, body = receiver.next()
    assert status == 200 and headers["webhook-id"] == failing.id
    assert Webhook(secret).verify(body, headers) == {"n": 2}
    ok("endpoint.recover")

    print(f"{passed} passed, 0 failed", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception:
        import traceback

        traceback.print_exc()
        sys.exit(1)
