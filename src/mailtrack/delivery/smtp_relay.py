"""The SMTP relay client: one session sends many messages, asking for DSNs where the relay offers them.

smtplib runs in a worker thread (aiosmtplib is not a dependency). Each send is one MAIL/RCPT/DATA
transaction on a connection that is opened lazily, upgraded with STARTTLS (or implicit TLS),
authenticated, and reused for the next message; a connection-level failure drops it and the next
send reconnects. The caller gets a `RelayReply` for every send, never an exception, so one bad
message or a dead relay cannot lose the outcome of the others.
"""

from __future__ import annotations

import logging
import re
import smtplib
import socket
import ssl
from dataclasses import dataclass
from types import TracebackType

from mailtrack.config import Settings

log = logging.getLogger(__name__)

# Stages: only a refusal at RCPT or at the end of DATA is about the recipient (a bounce); anything
# earlier (connect, TLS, AUTH, MAIL FROM) is about our relay or our configuration, and is retried.
RECIPIENT_STAGES = ("rcpt", "data")
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
# Queue ids as relays word their 250 reply, most specific first.
_QUEUE_ID_PATTERNS = (
    re.compile(r"queued as ([A-Za-z0-9][\w.-]{2,80})"),  # Postfix, SendGrid, Mailjet, many others
    re.compile(r"\bid=([A-Za-z0-9][\w.-]{2,80})"),  # Exim
    re.compile(r"InternalId=(\d{1,30})"),  # Exchange, Office 365
    re.compile(r"^(?:\d\.\d\.\d\s+)?([A-Za-z0-9]{10,40}) Message accepted for delivery"),  # Sendmail
    re.compile(r"^OK\s+\d+\s+(\S{6,80}) - gsmtp", re.IGNORECASE),  # Gmail / Google Workspace relay
    re.compile(r"^(?:\d\.\d\.\d\s+)?Ok:?\s+([0-9a-f]{16,}(?:-[0-9a-f]+){2,})", re.IGNORECASE),  # SES
    re.compile(r"\bqp (\d{1,20})"),  # qmail
)


@dataclass(frozen=True, slots=True)
class RelayReply:
    """The relay's answer to one send: code 0 means no answer (connection, TLS or timeout failure)."""

    code: int
    text: str
    stage: str  # connect | tls | auth | mail | rcpt | data

    @property
    def accepted(self) -> bool:
        """The relay took responsibility for the message (250 after DATA)."""
        return self.stage == "data" and 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        """A 5xx refusal of this recipient or message: a hard bounce (or soft, for a full mailbox)."""
        return self.stage in RECIPIENT_STAGES and 500 <= self.code < 600

    @property
    def relay_failure(self) -> bool:
        """The failure is our relay's or our configuration's, not the recipient's."""
        return self.stage not in RECIPIENT_STAGES

    @property
    def status(self) -> str:
        """The RFC 3463 enhanced status code, or one implied by the basic code."""
        match = _ENHANCED.match(self.text.strip())
        if match:
            return ".".join(match.groups())
        if self.code == 0:
            return "4.4.1"  # no answer from host
        return f"{self.code // 100}.0.0"

    @property
    def queue_id(self) -> str | None:
        """The relay's queue id from a 250 reply, when it names one in a known wording."""
        return parse_queue_id(self.text) if self.accepted else None

    def line(self) -> str:
        """The reply as one line, for diagnostics and logs."""
        text = " ".join(self.text.split())
        return f"{self.code} {text}" if self.code else text


def parse_queue_id(text: str) -> str | None:
    """The queue id a relay named in its 250 reply text, else None."""
    text = " ".join(text.split())
    for pattern in _QUEUE_ID_PATTERNS:
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None


def bounce_kind(status: str) -> str:
    """Hard or soft for an enhanced status: class 5 is hard, except a full mailbox (X.2.2, X.3.1)."""
    # Same rule as inbound bounces (docs/bounces.md): Gmail answers a full inbox 552 5.2.2.
    if status[1:] in (".2.2", ".3.1"):
        return "soft"
    return "hard" if status.startswith("5") else "soft"


def xtext(value: str) -> str:
    """RFC 3461 xtext: '+', '=', controls and non-ASCII become +XX (for ENVID and ORCPT)."""
    out = []
    for byte in value.encode("utf-8"):
        char = chr(byte)
        out.append(f"+{byte:02X}" if byte < 33 or byte > 126 or char in "+=" else char)
    return "".join(out)


class SmtpRelay:
    """Where and how to reach the relay; `session()` opens a reusable connection."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        security: str = "starttls",
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
    ) -> None:
        """A relay at host:port; `security` is starttls, tls (implicit) or none."""
        if security not in ("starttls", "tls", "none"):
            raise ValueError(f"unknown SMTP security {security!r}")
        self.host, self.port, self.security = host, port, security
        self.username, self.password = username, password
        self.timeout = timeout
        self.ssl_context = ssl_context or ssl.create_default_context()
        self.local_hostname = local_hostname

    @classmethod
    def from_settings(cls, settings: Settings, *, ssl_context: ssl.SSLContext | None = None) -> SmtpRelay:
        """The relay configured by MAILTRACK_SMTP_*; raises ValueError when no host is set."""
        if not settings.smtp_host:
            raise ValueError("MAILTRACK_SMTP_HOST is not set")
        return cls(
            settings.smtp_host,
            settings.smtp_port,
            security=settings.smtp_security,
            username=settings.smtp_username,
            password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
            timeout=settings.smtp_timeout_seconds,
            ssl_context=ssl_context,
        )

    def session(self) -> RelaySession:
        """A session: use as a context manager, call `send` for each message."""
        return RelaySession(self)


class RelaySession:
    """One connection to the relay, opened on the first send and reopened after a failure."""

    def __init__(self, relay: SmtpRelay) -> None:
        """A session on `relay`; nothing is connected yet."""
        self.relay = relay
        self._smtp: smtplib.SMTP | None = None

    def __enter__(self) -> RelaySession:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """QUIT politely, or just drop the socket when the relay is gone."""
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()

    def send(self, envelope_from: str, recipient: str, data: bytes, *, envid: str) -> RelayReply:
        """One SMTP transaction; DSNs are requested when the relay advertises them (RFC 3461)."""
        connected = self._connect()
        if isinstance(connected, RelayReply):
            return connected
        smtp = connected
        stage = "mail"
        try:
            mail_options, rcpt_options = [], []
            if smtp.has_extn("dsn"):
                # RET=HDRS: a bounce quotes headers only, never our body. ENVID carries the VERP token.
                mail_options += ["RET=HDRS", f"ENVID={xtext(envid)}"]
                rcpt_options += ["NOTIFY=SUCCESS,FAILURE,DELAY", f"ORCPT=rfc822;{xtext(recipient)}"]
            if smtp.has_extn("size"):
                mail_options.append(f"SIZE={len(data)}")
            if not (envelope_from + recipient).isascii():
                if not smtp.has_extn("smtputf8"):
                    return RelayReply(553, "5.6.7 the relay does not accept non-ASCII addresses", "rcpt")
                mail_options.append("SMTPUTF8")
            code, reply = smtp.mail(envelope_from, mail_options)
            if code != 250:
                return self._refused(code, reply, stage)
            stage = "rcpt"
            code, reply = smtp.rcpt(recipient, rcpt_options)
            if code not in (250, 251):
                return self._refused(code, reply, stage)
            stage = "data"
            code, reply = smtp.data(data)
            return self._refused(code, reply, stage) if code >= 400 else RelayReply(code, _text(reply), stage)
        except smtplib.SMTPResponseException as exc:
            return self._refused(exc.smtp_code, exc.smtp_error, stage)
        except (smtplib.SMTPException, OSError) as exc:  # dropped connection, timeout, TLS alert
            self._drop()
            return RelayReply(0, str(exc) or type(exc).__name__, stage)

    def _refused(self, code: int, reply: bytes | str, stage: str) -> RelayReply:
        if code == 421 or code <= 0:
            self._drop()  # the relay is closing the connection; the next send reconnects
        elif self._smtp is not None:
            try:
                self._smtp.rset()  # the transaction failed; the connection can carry the next one
            except (smtplib.SMTPException, OSError):
                self._drop()
        return RelayReply(max(code, 0), _text(reply), stage)

    def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()

    def _connect(self) -> smtplib.SMTP | RelayReply:
        if self._smtp is not None:
            return self._smtp
        relay = self.relay
        stage = "connect"
        smtp: smtplib.SMTP | None = None
        try:
            name = relay.local_hostname or _local_hostname()
            if relay.security == "tls":
                smtp = smtplib.SMTP_SSL(
                    relay.host,
                    relay.port,
                    local_hostname=name,
                    timeout=relay.timeout,
                    context=relay.ssl_context,
                )
            else:
                smtp = smtplib.SMTP(relay.host, relay.port, local_hostname=name, timeout=relay.timeout)
            smtp.ehlo()
            if relay.security == "starttls":
                stage = "tls"
                if not smtp.has_extn("starttls"):
                    # Never fall back to cleartext: the password and customers' mail would travel in it.
                    smtp.close()
                    return RelayReply(0, "the relay does not offer STARTTLS", stage)
                smtp.starttls(context=relay.ssl_context)
                smtp.ehlo()
            if relay.username:
                stage = "auth"
                _login(smtp, relay.username, relay.password or "")
        except smtplib.SMTPResponseException as exc:
            if smtp is not None:
                smtp.close()
            return RelayReply(max(exc.smtp_code, 0), _text(exc.smtp_error), stage)
        except (smtplib.SMTPException, OSError) as exc:  # refused, unreachable, timeout, certificate
            if smtp is not None:
                smtp.close()
            return RelayReply(0, str(exc) or type(exc).__name__, stage)
        self._smtp = smtp
        return smtp


def _login(smtp: smtplib.SMTP, user: str, password: str) -> None:
    # One AUTH exchange with the best mechanism offered: smtplib's login() would try the next one
    # after a 535, and a relay that mishandles that fallback can hang until the timeout.
    offered = smtp.esmtp_features.get("auth", "").upper().split()
    smtp.user, smtp.password = user, password
    for name, method in (
        ("PLAIN", smtp.auth_plain),
        ("LOGIN", smtp.auth_login),
        ("CRAM-MD5", smtp.auth_cram_md5),
    ):
        if name in offered:
            smtp.auth(name, method, initial_response_ok=True)  # SMTPAuthenticationError unless 235
            return
    raise smtplib.SMTPNotSupportedError("the relay offers no AUTH mechanism Mailtrack speaks")


_HOSTNAME: list[str] = []


def _local_hostname() -> str:
    # socket.getfqdn() may wait on DNS; ask once per process, not per connection.
    if not _HOSTNAME:
        _HOSTNAME.append(socket.getfqdn() or "localhost")
    return _HOSTNAME[0]


def _text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return text[:1000]
