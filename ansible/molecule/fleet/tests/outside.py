"""The world outside the fleet, run by the verifier on the CI host: what the fleet's
inventory (inventories/molecule/group_vars/all/molecule.yml) points at.

- the account aggregator the sync queue calls (the app's fake, with the fleet's credentials);
- the SMTP relay, a sink keeping every message (the email queue and Alertmanager send here);
- the receiver of Alertmanager's webhook, keeping every notification.

The containers reach the CI host at their default gateway, the podman bridge; each service
listens on that address only, on the port the inventory names.
"""

from __future__ import annotations

import json
import threading
from email import message_from_bytes
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller

AGGREGATOR_PORT = 18900
SMTP_PORT = 18025
ALERT_WEBHOOK_PORT = 18093
# The fleet's aggregator credentials (inventories/molecule: clarity_aggregator.client_id and
# vault_aggregator_client_secret).
AGGREGATOR_CLIENT_ID = "clarity-test"
AGGREGATOR_CLIENT_SECRET = "clarity-test-secret-0123456789"


class SmtpSink:
    """An SMTP server that accepts everything and keeps it: (envelope rcpts, parsed message)."""

    def __init__(self, address: str, port: int):
        self.messages: list[tuple[list[str], object]] = []
        self._lock = threading.Lock()
        self._controller = Controller(self, hostname=address, port=port)

    async def handle_DATA(self, server, session, envelope):
        message = message_from_bytes(envelope.original_content or envelope.content,
                                     policy=default_policy)
        with self._lock:
            self.messages.append(([r.lower() for r in envelope.rcpt_tos], message))
        return "250 OK"

    def to(self, address: str) -> list:
        with self._lock:
            return [m for rcpts, m in self.messages if address.lower() in rcpts]

    def start(self):
        self._controller.start()
        return self

    def stop(self):
        self._controller.stop()


class AlertReceiver:
    """Alertmanager's webhook receiver: keeps every notification's JSON body."""

    def __init__(self, address: str, port: int):
        self.notifications: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.notifications.append(json.loads(body or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer((address, port), Handler)
        self._server.daemon_threads = True

    def alerts(self, status: str = "firing") -> list[dict]:
        return [alert for n in list(self.notifications) for alert in n.get("alerts", [])
                if alert.get("status") == status]

    def start(self):
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self._server.shutdown()
        self._server.server_close()


class Aggregator:
    """The app's fake aggregator (app.devstack.fake_aggregator, from the verifier's venv) with
    the fleet's client credentials, answering every user login with deterministic accounts,
    holdings and transactions (the same server as `python -m app.devstack.fake_aggregator`)."""

    def __init__(self, address: str, port: int):
        from app.devstack.fake_aggregator import DataSet, FakeAggregator

        self._dataset = DataSet
        self.fake = FakeAggregator(host=address, port=port, client_id=AGGREGATOR_CLIENT_ID,
                                   client_secret=AGGREGATOR_CLIENT_SECRET, any_user=True)

    def expected(self, user_id: int) -> tuple[int, int]:
        """(accounts, holdings) the aggregator answers for the user."""
        data = self._dataset.generate(str(user_id))
        return len(data.accounts), sum(len(h) for h in data.holdings.values())

    def start(self):
        self.fake.start()
        return self

    def stop(self):
        self.fake.stop()


class Outside:
    def __init__(self, address: str):
        self.address = address
        self.aggregator = Aggregator(address, AGGREGATOR_PORT)
        self.smtp = SmtpSink(address, SMTP_PORT)
        self.alerts = AlertReceiver(address, ALERT_WEBHOOK_PORT)

    def start(self):
        self.aggregator.start()
        self.smtp.start()
        self.alerts.start()
        return self

    def stop(self):
        for service in (self.aggregator, self.smtp, self.alerts):
            service.stop()
