"""A client for a Yodlee-style aggregator REST API (accounts, holdings, transactions).

Authentication: the app's client credentials buy a per-user bearer token
(`POST /auth/token`, the user's login name in the `loginName` header); tokens are cached
until shortly before they expire, and a 401 drops the token and retries once with a new
one (tokens also die early when the provider rotates them).

Errors fall in two kinds, which the sync handler maps onto the queue's behaviour:
- `AggregatorUnavailable` (transient): timeouts, connection errors, 5xx, a 429/503 whose
  `Retry-After` is longer than we are willing to sleep in a worker, a malformed page. The
  client has already retried a few times with backoff; the job retries later.
- `AggregatorRejected` (permanent): any other 4xx. Carries the provider's error code and
  message; retrying would get the same answer, so the job fails at once.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal

import httpx

from app.jobs.settings import HandlerSettings, get_handler_settings

log = logging.getLogger("clarity.aggregator")

TOKEN_MARGIN = 60.0  # refresh this long before the provider says a token expires


class AggregatorError(Exception):
    transient = True


class AggregatorUnavailable(AggregatorError):
    """Try again later. `retry_after` (seconds) is the provider's hint, when it gave one."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class AggregatorRejected(AggregatorError):
    """The provider refused the request (4xx); the same request will fail again."""

    transient = False

    def __init__(self, status: int, code: str | None, message: str, path: str):
        super().__init__(f"{path}: HTTP {status}"
                         + (f" {code}" if code else "") + f": {message}")
        self.status = status
        self.code = code
        self.provider_message = message


class MalformedBody(ValueError):
    """A 2xx answer whose body is not what the API documents."""


@dataclass
class _Token:
    value: str
    expires_at: float


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class AggregatorClient:
    """Thread-safe; one per worker process is enough (it holds a connection pool)."""

    def __init__(self, settings: HandlerSettings | None = None, *,
                 transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep, backoff_base: float = 0.5,
                 backoff_max: float = 8.0):
        self.settings = settings or get_handler_settings()
        self.page_size = self.settings.aggregator_page_size
        self.max_attempts = self.settings.aggregator_max_attempts
        self.max_retry_after = self.settings.aggregator_max_retry_after
        self._sleep = sleep
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._http = httpx.Client(
            base_url=self.settings.aggregator_base_url.rstrip("/"),
            timeout=httpx.Timeout(self.settings.aggregator_timeout,
                                  connect=min(10.0, self.settings.aggregator_timeout)),
            headers={"Api-Version": "1.1", "Accept": "application/json"},
            transport=transport)
        self._tokens: dict[str, _Token] = {}
        self._token_lock = threading.Lock()
        self.requests_made = 0

    def close(self) -> None:
        self._http.close()

    # -- tokens --------------------------------------------------------------------------

    def _token(self, login: str) -> str:
        with self._token_lock:
            token = self._tokens.get(login)
            if token is not None and token.expires_at > time.monotonic():
                return token.value
        body = self._send("POST", "/auth/token", None, headers={"loginName": login},
                          data={"clientId": self.settings.aggregator_client_id,
                                "secret": self.settings.aggregator_client_secret
                                .get_secret_value()})
        try:
            info = body["token"]
            value, expires_in = str(info["accessToken"]), float(info["expiresIn"])
        except (KeyError, TypeError, ValueError):
            raise AggregatorUnavailable("/auth/token: malformed token response") from None
        with self._token_lock:
            self._tokens[login] = _Token(
                value, time.monotonic() + max(0.0, expires_in - TOKEN_MARGIN))
        return value

    def _drop_token(self, login: str) -> None:
        with self._token_lock:
            self._tokens.pop(login, None)

    # -- requests ------------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self._backoff_max, self._backoff_base * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    def _send(self, method: str, path: str, login: str | None, *, params=None, headers=None,
              data=None, extract: Callable[[dict], object] | None = None,
              received: Callable[[bytes], object] | None = None):
        """One API call with retries. `login` set: authenticated as that user. `extract`
        picks the answer out of the body and raises ValueError if the body is malformed
        (retried like a 5xx: a truncated or garbled page is usually a provider hiccup).
        `received` is given the body of the answer that was accepted."""
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            request_headers = dict(headers or {})
            if login is not None:
                request_headers["Authorization"] = f"Bearer {self._token(login)}"
            try:
                self.requests_made += 1
                response = self._http.request(method, path, params=params,
                                              headers=request_headers, data=data)
            except httpx.TimeoutException as exc:
                problem = f"{path}: timed out ({type(exc).__name__})"
            except httpx.TransportError as exc:
                problem = f"{path}: {type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                if 200 <= status < 300:
                    try:
                        body = _parse_json(response.content)
                        answer = extract(body) if extract is not None else body
                        if received is not None:
                            received(response.content)
                        return answer
                    except ValueError as exc:
                        problem = f"{path}: malformed response ({exc})"
                elif status == 401 and login is not None and not refreshed:
                    # Expired or rotated token: one fresh token, not counted as an attempt.
                    log.info("aggregator token for %s refused on %s; refreshing", login, path)
                    self._drop_token(login)
                    refreshed = True
                    attempt -= 1
                    continue
                elif status in (429, 503):
                    wait = parse_retry_after(response.headers.get("Retry-After"))
                    if wait is not None and wait > self.max_retry_after:
                        raise AggregatorUnavailable(
                            f"{path}: HTTP {status}, provider asks to wait {wait:.0f}s",
                            retry_after=wait)
                    if attempt >= self.max_attempts:
                        raise AggregatorUnavailable(f"{path}: HTTP {status} after {attempt} "
                                                    "attempts", retry_after=wait)
                    wait = self._backoff(attempt) if wait is None else wait
                    log.warning("aggregator %s %s: HTTP %s, waiting %.2fs", method, path,
                                status, wait)
                    self._sleep(wait)
                    continue
                elif 400 <= status < 500:
                    code, message = _provider_error(response)
                    raise AggregatorRejected(status, code, message, path)
                else:
                    problem = f"{path}: HTTP {status}"
            if attempt >= self.max_attempts:
                raise AggregatorUnavailable(f"{problem} (after {attempt} attempts)")
            wait = self._backoff(attempt)
            log.warning("aggregator %s %s failed: %s; retrying in %.2fs", method, path, problem,
                        wait)
            self._sleep(wait)

    def _pages(self, path: str, login: str, key: str, params: dict,
               received: Callable[[bytes], object] | None = None) -> Iterator[dict]:
        skip = 0
        while True:
            items = self._send("GET", path, login,
                               params={**params, "skip": skip, "top": self.page_size},
                               extract=lambda body: _items(body, key), received=received)
            yield from items
            if len(items) < self.page_size:
                return
            skip += len(items)

    # -- API -----------------------------------------------------------------------------

    def accounts(self, login: str) -> list[dict]:
        return self._send("GET", "/accounts", login, extract=lambda body: _items(body, "account"))

    def holdings(self, login: str, account_id: str, received=None) -> list[dict]:
        """Every holding of the account; `received` is given each page's body as it came."""
        return list(self._pages("/holdings", login, "holding", {"accountId": account_id},
                                received=received))

    def transactions(self, login: str, account_id: str, from_date: dt.date,
                     received=None) -> list[dict]:
        """The account's transactions since `from_date`; `received` as for holdings()."""
        return list(self._pages("/transactions", login, "transaction",
                                {"accountId": account_id, "fromDate": from_date.isoformat()},
                                received=received))

    def account_data(self, login: str, account_id: str, from_date: dt.date
                     ) -> tuple[list[dict], list[dict], str]:
        """holdings(), transactions() and a digest of the pages exactly as received: the
        same digest, the same data (a repeat sync skips the account). Cheap: the bytes are
        hashed as they come, nothing is encoded again."""
        digest = hashlib.blake2b(digest_size=32)
        holdings = self.holdings(login, account_id, received=digest.update)
        digest.update(b"\0transactions\0")
        transactions = self.transactions(login, account_id, from_date, received=digest.update)
        return holdings, transactions, digest.hexdigest()


def _parse_json(content: bytes) -> dict:
    body = json.loads(content, parse_float=Decimal)  # money: no binary floats
    if not isinstance(body, dict):
        raise MalformedBody(f"expected a JSON object, got {type(body).__name__}")
    return body


def _items(body: dict, key: str) -> list[dict]:
    """The list under `key`. Yodlee answers an empty list as `{}`; anything else that is
    not a list of objects with an id is a malformed page."""
    if key not in body:
        if not body:
            return []
        raise MalformedBody(f"no {key!r} list")
    items = body[key]
    if not isinstance(items, list) or not all(
            isinstance(item, dict) and "id" in item for item in items):
        raise MalformedBody(f"{key!r} is not a list of objects with an id")
    return items


def _provider_error(response: httpx.Response) -> tuple[str | None, str]:
    try:
        body = response.json()
    except ValueError:
        return None, response.text[:300] or response.reason_phrase
    if isinstance(body, dict):
        code = body.get("errorCode")
        message = body.get("errorMessage") or body.get("message") or json.dumps(body)[:300]
        return (str(code) if code is not None else None), str(message)
    return None, str(body)[:300]


_client: AggregatorClient | None = None
_client_lock = threading.Lock()


def get_client() -> AggregatorClient:
    """The process-wide client (its token cache and connection pool are shared)."""
    global _client
    with _client_lock:
        if _client is None:
            _client = AggregatorClient()
        return _client


def reset_client() -> None:
    global _client
    with _client_lock:
        if _client is not None:
            _client.close()
        _client = None
