"""SMTP delivery and email rendering.

One SMTP connection per worker thread, opened on first use and reused for the next
messages (a NOOP checks it is still alive when it has been idle); a dropped connection is
reopened once. STARTTLS (port 587), implicit TLS (port 465) or none (local relays).

Errors are classified for the queue: `TransientMailError` (SMTP 4xx, connection trouble)
is retried later; `PermanentMailError` (SMTP 5xx) carries the server's reply and is not.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from app.jobs.settings import HandlerSettings, get_handler_settings

log = logging.getLogger("clarity.mailer")

TEMPLATES = ("welcome", "password_reset", "sync_failed", "weekly_income_summary",
             "notification")
IDLE_CHECK_SECONDS = 30.0


class MailError(Exception):
    transient = True

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


class TransientMailError(MailError):
    """Try again later: SMTP 4xx, or the server could not be reached."""


class PermanentMailError(MailError):
    """The server refused for good (SMTP 5xx); the reply says why."""

    transient = False


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


_env: Environment | None = None


def template_env() -> Environment:
    global _env
    if _env is None:
        _env = Environment(loader=PackageLoader("app.jobs", "templates/email"),
                           autoescape=select_autoescape(["html"]),
                           undefined=_Lenient, keep_trailing_newline=True)
    return _env


class _Lenient(StrictUndefined):
    """Optional context values (`name or "there"`) may be missing; printing a missing
    value is still an error, so a template bug fails the job instead of sending blanks."""

    def __bool__(self):
        return False


def render(template: str, context: dict, settings: HandlerSettings | None = None
           ) -> RenderedEmail:
    if template not in TEMPLATES:
        raise ValueError(f"unknown email template {template!r} (known: {', '.join(TEMPLATES)})")
    settings = settings or get_handler_settings()
    env = template_env()
    context = {"app_url": settings.app_base_url.rstrip("/"), **context}
    subject = " ".join(env.get_template(f"{template}.subject.txt").render(context).split())
    return RenderedEmail(subject=subject[:300],
                         text=env.get_template(f"{template}.txt").render(context),
                         html=env.get_template(f"{template}.html").render(context))


def build_message(to: str, rendered: RenderedEmail, sender: str, message_id: str,
                  headers: dict | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = rendered.subject
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = message_id
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(rendered.text)
    msg.add_alternative(rendered.html, subtype="html")
    return msg


def message_id_for(key: str, sender: str) -> str:
    """A Message-ID derived from the idempotency key: if a crash ever makes us send the
    same email twice, mail clients see one message."""
    import hashlib

    domain = sender.rsplit("@", 1)[-1].strip(">").strip() or "localhost"
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:32]}@{domain}>"


class Mailer:
    """Sends messages over one reused SMTP connection. Not shared between threads: use
    `get_mailer()`, which keeps one per thread."""

    def __init__(self, settings: HandlerSettings | None = None):
        self.settings = settings or get_handler_settings()
        self._smtp: smtplib.SMTP | None = None
        self._last_used = 0.0
        self.connections_opened = 0

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        context = ssl.create_default_context()
        try:
            if s.smtp_security == "tls":
                smtp = smtplib.SMTP_SSL(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout,
                                        context=context)
            else:
                smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout)
                if s.smtp_security == "starttls":
                    smtp.starttls(context=context)
            if s.smtp_user:
                password = s.smtp_password.get_secret_value() if s.smtp_password else ""
                smtp.login(s.smtp_user, password)
        except smtplib.SMTPAuthenticationError as exc:
            # Wrong credentials will not fix themselves, but a deploy can fix them: retried.
            raise TransientMailError(f"SMTP login refused: {exc.smtp_code} "
                                     f"{_reply(exc.smtp_error)}", exc.smtp_code) from None
        except smtplib.SMTPResponseException as exc:
            raise _classify(exc) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise TransientMailError(f"cannot connect to SMTP {s.smtp_host}:{s.smtp_port}: "
                                     f"{type(exc).__name__}: {exc}") from None
        self.connections_opened += 1
        return smtp

    def _connection(self) -> smtplib.SMTP:
        if self._smtp is not None and time.monotonic() - self._last_used > IDLE_CHECK_SECONDS:
            try:
                if self._smtp.noop()[0] != 250:
                    self.close()
            except (OSError, smtplib.SMTPException):
                self.close()
        if self._smtp is None:
            self._smtp = self._connect()
        return self._smtp

    def send(self, msg: EmailMessage) -> None:
        """Send one message; raises TransientMailError or PermanentMailError."""
        for attempt in (1, 2):
            smtp = self._connection()
            try:
                refused = smtp.send_message(msg)
            except smtplib.SMTPServerDisconnected:
                # The server closed our idle connection: reconnect once. If it was mid-DATA
                # the message was not accepted (no 250), so resending is safe.
                self.close()
                if attempt == 2:
                    raise TransientMailError("SMTP server disconnected") from None
                continue
            except smtplib.SMTPRecipientsRefused as exc:
                self._reset()
                codes = [code for code, _ in exc.recipients.values()]
                replies = "; ".join(f"{rcpt}: {code} {_reply(text)}"
                                    for rcpt, (code, text) in exc.recipients.items())
                cls = PermanentMailError if all(c >= 500 for c in codes) else TransientMailError
                raise cls(f"recipient refused: {replies}", max(codes)) from None
            except smtplib.SMTPResponseException as exc:
                self._reset()
                raise _classify(exc) from None
            except (OSError, smtplib.SMTPException) as exc:
                self.close()
                raise TransientMailError(f"SMTP error: {type(exc).__name__}: {exc}") from None
            self._last_used = time.monotonic()
            if refused:
                log.warning("SMTP accepted the message but refused some recipients: %s",
                            refused)
            return

    def _reset(self) -> None:
        try:
            if self._smtp is not None:
                self._smtp.rset()
        except (OSError, smtplib.SMTPException):
            self.close()

    def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                smtp.close()


def _reply(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _classify(exc: smtplib.SMTPResponseException) -> MailError:
    text = f"SMTP {exc.smtp_code} {_reply(exc.smtp_error)}"
    if 500 <= exc.smtp_code < 600:
        return PermanentMailError(text, exc.smtp_code)
    return TransientMailError(text, exc.smtp_code)


_local = threading.local()


def get_mailer() -> Mailer:
    """This thread's mailer (its SMTP connection is reused across jobs)."""
    mailer = getattr(_local, "mailer", None)
    settings = get_handler_settings()
    if mailer is None or mailer.settings is not settings:
        if mailer is not None:
            mailer.close()
        mailer = _local.mailer = Mailer(settings)
    return mailer


def new_message_id(sender: str) -> str:
    domain = sender.rsplit("@", 1)[-1].strip(">").strip() or "localhost"
    return make_msgid(domain=domain)
