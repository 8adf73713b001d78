"""A local HTTP server that behaves like a Yodlee-style aggregator, for tests and the bench.

What it imitates:
- `POST /auth/token` (form: clientId, secret; header loginName) -> a bearer token that
  expires after `token_ttl` seconds or `token_max_uses` requests, whichever comes first;
- `GET /accounts`, `GET /holdings?accountId&skip&top`, `GET /transactions?accountId&
  fromDate&skip&top`, paginated with skip/top, empty lists answered as `{}` (as Yodlee does);
- errors as JSON `{"errorCode": ..., "errorMessage": ...}`.

Faults are queued per path with `fail(path, kind, times=1)`: "429" (with Retry-After),
"503", "500", "malformed" (truncated JSON), "badpage" (valid JSON, wrong shape),
"400" (a provider rejection), "expire" (the caller's token dies now). Data per user is
generated deterministically by `DataSet` and can be changed between syncs.

Tests use it in-process (`FakeAggregator().start()`, on 127.0.0.1). The fleet's end-to-end
test runs it on a host as a server of its own, answering for any user:

    python -m app.devstack.fake_aggregator --host 0.0.0.0 --port 8900 \
        --client-id ID --client-secret SECRET
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

CLIENT_ID = "clarity-test"
CLIENT_SECRET = "clarity-test-secret-0123456789"

SYMBOLS = ["VTI", "SCHD", "O", "JEPI", "VYM", "KO", "PEP", "JNJ", "MO", "T", "XOM", "ABBV"]


@dataclass
class DataSet:
    """A user's accounts, holdings and transactions, as the provider would answer them."""

    accounts: list[dict] = field(default_factory=list)
    holdings: dict[str, list[dict]] = field(default_factory=dict)
    transactions: dict[str, list[dict]] = field(default_factory=dict)

    @classmethod
    def generate(cls, user: str, accounts: int = 2, holdings: int = 5, transactions: int = 20,
                 today: dt.date | None = None) -> DataSet:
        today = today or dt.date.today()
        data = cls()
        for a in range(accounts):
            account_id = f"{user}-acc{a}"
            data.accounts.append({
                "id": account_id, "CONTAINER": "investment", "accountName": f"Brokerage {a}",
                "accountType": "BROKERAGE_CASH", "providerName": "Test Brokerage",
                "accountStatus": "ACTIVE",
                "balance": {"amount": Decimal(f"{1000 + a * 17}.25"), "currency": "USD"}})
            data.holdings[account_id] = [{
                "id": f"{account_id}-h{h}", "symbol": SYMBOLS[h % len(SYMBOLS)],
                "description": f"Holding {h}", "quantity": Decimal(f"{10 + h}.5"),
                "price": {"amount": Decimal(f"{20 + h % 50}.10"), "currency": "USD"},
                "value": {"amount": Decimal(f"{(10 + h + Decimal('0.5')) * (20 + h % 50 + Decimal('0.10'))}"),
                          "currency": "USD"},
                "costBasis": {"amount": Decimal(f"{200 + h}.00"), "currency": "USD"},
                "annualDividendPerShare": Decimal(f"{1 + h % 4}.{h % 10}0"),
            } for h in range(holdings)]
            data.transactions[account_id] = [{
                "id": f"{account_id}-t{t}", "date": (today - dt.timedelta(days=t % 365)).isoformat(),
                "amount": {"amount": Decimal(f"{5 + t % 90}.{t % 100:02d}"), "currency": "USD"},
                "category": "Dividend" if t % 3 == 0 else "Buy",
                "baseType": "CREDIT" if t % 3 == 0 else "DEBIT",
                "description": {"original": f"Transaction {t}"},
                "symbol": SYMBOLS[t % len(SYMBOLS)],
            } for t in range(transactions)]
        return data


class _Encoder(json.JSONEncoder):
    def default(self, o):
        if isinstance(o, Decimal):
            return float(o)  # what a real provider sends: JSON numbers
        return super().default(o)


class FakeAggregator:
    def __init__(self, token_ttl: float = 1800.0, token_max_uses: int | None = None,
                 latency: float = 0.0, *, host: str = "127.0.0.1", port: int = 0,
                 client_id: str = CLIENT_ID, client_secret: str = CLIENT_SECRET,
                 any_user: bool = False):
        self.host, self.port = host, port
        self.client_id, self.client_secret = client_id, client_secret
        self.any_user = any_user  # answer every login with its generated DataSet
        self.token_ttl = token_ttl
        self.token_max_uses = token_max_uses
        self.latency = latency
        self.users: dict[str, DataSet] = {}
        self.tokens: dict[str, dict] = {}
        self.faults: dict[str, list[str]] = defaultdict(list)
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self.tokens_issued = 0
        self.retry_after = "1"
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control -------------------------------------------------------------------------

    def start(self) -> FakeAggregator:
        fake = self

        class Handler(_Handler):
            aggregator = fake

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add_user(self, login: str, data: DataSet | None = None, **sizes) -> DataSet:
        data = data or DataSet.generate(login, **sizes)
        with self._lock:
            self.users[login] = data
        return data

    def fail(self, path: str, kind: str, times: int = 1) -> None:
        with self._lock:
            self.faults[path].extend([kind] * times)

    def expire_tokens(self) -> None:
        with self._lock:
            self.tokens.clear()

    def count(self, path: str, status: int | None = None) -> int:
        with self._lock:
            return sum(1 for _m, p, s in self.requests
                       if p == path and (status is None or s == status))

    # -- serving -------------------------------------------------------------------------

    def _take_fault(self, path: str) -> str | None:
        with self._lock:
            queue = self.faults.get(path)
            return queue.pop(0) if queue else None

    def handle(self, method: str, path: str, query: dict, headers, body: bytes):
        """-> (status, headers, body bytes)"""
        if self.latency:
            time.sleep(self.latency)
        fault = self._take_fault(path)
        if fault == "429":
            return 429, {"Retry-After": self.retry_after}, _error("Y803", "Too many requests")
        if fault == "503":
            return 503, {"Retry-After": self.retry_after}, _error("Y901", "Service unavailable")
        if fault == "500":
            return 500, {}, b"<html>Internal Server Error</html>"
        if fault == "400":
            return 400, {}, _error("Y800", "Invalid value for accountId")
        if method == "POST" and path == "/auth/token":
            return self._issue_token(headers, body)
        login = self._authenticate(headers)
        if login is None or fault == "expire":
            return 401, {}, _error("Y008", "Invalid token in authorization header")
        data = self.users.get(login)
        if data is None and self.any_user:
            data = self.add_user(login)
        if data is None:
            return 404, {}, _error("Y807", f"Resource not found: user {login}")
        if fault == "malformed":
            return 200, {}, b'{"holding": [{"id": "x", "symbol": "VT'
        if fault == "badpage":
            return 200, {}, json.dumps({"holding": "not a list"}).encode()
        if path == "/accounts":
            return 200, {}, _json({"account": data.accounts} if data.accounts else {})
        if path in ("/holdings", "/transactions"):
            account_id = _one(query, "accountId")
            source = data.holdings if path == "/holdings" else data.transactions
            if account_id not in source:
                return 400, {}, _error("Y800", "Invalid value for accountId")
            items = source[account_id]
            if path == "/transactions" and _one(query, "fromDate"):
                start = _one(query, "fromDate")
                items = [t for t in items if t["date"] >= start]
            skip, top = int(_one(query, "skip") or 0), int(_one(query, "top") or 500)
            page = items[skip:skip + top]
            key = "holding" if path == "/holdings" else "transaction"
            return 200, {}, _json({key: page} if page else {})
        return 404, {}, _error("Y807", f"Resource not found: {path}")

    def _issue_token(self, headers, body: bytes):
        form = parse_qs(body.decode())
        if _one(form, "clientId") != self.client_id or _one(form, "secret") != self.client_secret:
            return 401, {}, _error("Y016", "Invalid client credentials")
        login = headers.get("loginName")
        if not login:
            return 400, {}, _error("Y800", "Invalid value for loginName")
        token = secrets.token_hex(16)
        with self._lock:
            self.tokens[token] = {"login": login, "expires": time.monotonic() + self.token_ttl,
                                  "uses": 0}
            self.tokens_issued += 1
        return 201, {}, _json({"token": {"accessToken": token, "expiresIn": self.token_ttl,
                                         "issuedAt": dt.datetime.now(dt.UTC).isoformat()}})

    def _authenticate(self, headers) -> str | None:
        auth = headers.get("Authorization") or ""
        if not auth.startswith("Bearer "):
            return None
        with self._lock:
            info = self.tokens.get(auth[7:])
            if info is None or info["expires"] < time.monotonic():
                return None
            info["uses"] += 1
            if self.token_max_uses is not None and info["uses"] > self.token_max_uses:
                del self.tokens[auth[7:]]
                return None
            return info["login"]


class _Handler(BaseHTTPRequestHandler):
    aggregator: FakeAggregator
    protocol_version = "HTTP/1.1"  # keep-alive, as real providers do
    # Headers and body go out in two writes: with Nagle's algorithm on, the body waits for
    # the client's delayed ACK of the headers (up to 40 ms per response on Linux), which
    # made the fake provider, not the sync, the slow part of every sync benchmark.
    disable_nagle_algorithm = True

    def log_message(self, format, *args):
        pass

    def _serve(self, method: str):
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, headers, payload = self.aggregator.handle(method, url.path, parse_qs(url.query),
                                                          self.headers, body)
        with self.aggregator._lock:
            self.aggregator.requests.append((method, url.path, status))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self):
        self._serve("GET")

    def do_POST(self):
        self._serve("POST")


def _one(query: dict, name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _json(body) -> bytes:
    return json.dumps(body, cls=_Encoder).encode()


def _error(code: str, message: str) -> bytes:
    return _json({"errorCode": code, "errorMessage": message, "referenceCode": "ref-test"})


def main(argv=None) -> None:
    import argparse
    import signal

    parser = argparse.ArgumentParser(description="A fake aggregator (Yodlee-style API) that "
                                     "answers every user with generated, deterministic data.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--client-id", default=CLIENT_ID)
    parser.add_argument("--client-secret", default=CLIENT_SECRET)
    args = parser.parse_args(argv)
    fake = FakeAggregator(host=args.host, port=args.port, client_id=args.client_id,
                          client_secret=args.client_secret, any_user=True).start()
    print(f"fake aggregator on {fake.url}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    fake.stop()


if __name__ == "__main__":
    main()
