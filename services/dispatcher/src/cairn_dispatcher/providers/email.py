"""Email over SMTP (aiosmtplib): a pool of open connections per channel, tracking written in.

Every email carries ``Message-ID: <{delivery id}@cairn>`` (the idempotency key travels with it),
an open pixel and click-tracking links when tracking is configured, and for marketing channels a
``List-Unsubscribe`` header (RFC 8058 one-click) plus an unsubscribe link in the footer, all
pointing at ingest's ``/t/...`` endpoints with sealed tokens (``cairn_common.tracking``).
"""

from __future__ import annotations

import asyncio
import html as html_lib
import re
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import compat32
from email.utils import formataddr, formatdate, parseaddr
from urllib.parse import urlsplit

import aiosmtplib
import msgspec

from cairn_common import tracking
from cairn_dispatcher import egress
from cairn_dispatcher.documents import DocumentError, Target
from cairn_dispatcher.providers.base import (
    Failed,
    Job,
    PermanentError,
    SendOutcome,
    Sent,
    client_span,
    mark_outcome,
)
from cairn_journey.render import LINK_HREF

_UNFOLDED = compat32.clone(max_line_length=0)  # tracking URLs stay on one header line
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]")


class OutgoingEmail(msgspec.Struct, frozen=True):
    sender: str
    recipient: str
    data: bytes
    message_id: str


_LINE_BREAKS = re.compile(r"[\r\n\x00\x0b\x0c\x85\u2028\u2029]")
_ADDR_SPEC = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-\u0080-\U0010ffff]{1,64}"
    r"@(?=.{1,253}$)[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\-\u0080-\U0010ffff]{0,61}"
    r"[A-Za-z0-9\u0080-\U0010ffff])?(?:\.[A-Za-z0-9\u0080-\U0010ffff]"
    r"(?:[A-Za-z0-9\-\u0080-\U0010ffff]{0,61}[A-Za-z0-9\u0080-\U0010ffff])?)*$"
)


def checked(name: str, value: str) -> str:
    """A header value built from templates or traits, refused when it could start a new header.

    A CR, LF (or another line separator, or NUL) anywhere is a permanent failure of the delivery
    naming the header, whatever the Python version's own email package would do with it: never an
    injected header line and never a retry."""
    if _LINE_BREAKS.search(value):
        raise PermanentError(f"{name} contains a line break, refused: {value[:80]!r}")
    return value


def valid_address(name: str, value: str, *, display_name: bool) -> str:
    """``value`` as one valid email address (``local@domain``; with ``display_name``, also
    ``Name <local@domain>``), else a permanent failure naming the header. Returns the bare
    address."""
    checked(name, value)
    written = value.strip()
    if display_name:
        written = written.rsplit("<", 1)[-1].rstrip(">").strip()
    address = parseaddr(value)[1]
    if address != written or not _ADDR_SPEC.match(address) or ".." in address:
        raise PermanentError(f"{name} address {value[:80]!r} is not a valid email address")
    return address


def _header(value: str) -> str:
    """A header value, RFC 2047-encoded when it is not plain ASCII (names and subjects)."""
    if value.isascii():
        return value
    name, address = parseaddr(value)
    if address and name and "@" in address and value.rstrip().endswith(">"):
        return formataddr((name, address), charset="utf-8")
    return Header(value, "utf-8").encode()


class EmailTracking:
    """Writes the open pixel, click redirects and unsubscribe link for one email.

    Only links the template's author wrote are tracked (``Rendered.literal_links``), or links to
    a host the channel lists in ``options.tracking.link_hosts``: a URL taken from an event or a
    trait is left as it is, so a sealed Cairn link never redirects where data said."""

    def __init__(self, base_url: str, secret: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.keys = tracking.TrackingKeys(secret) if secret else None

    @property
    def enabled(self) -> bool:
        return self.keys is not None

    def _message(self, job: Job) -> tracking.TrackedMessage:
        req = job.request
        return tracking.TrackedMessage(
            delivery_id=req.delivery_id,
            instance_id=req.instance_id,
            journey=req.journey,
            step_id=req.step_id,
            profile_id=req.profile_id,
            channel=req.channel or "email",
            address=job.address,
        )

    def _seal(self) -> tracking.TrackingKeys:
        if self.keys is None:
            raise PermanentError("email tracking is not configured")
        return self.keys

    def unsubscribe_url(self, job: Job) -> str:
        return tracking.unsubscribe_url(self.base_url, self._seal(), self._message(job))

    def decorate_html(self, job: Job, body: str, marketing: bool) -> str:
        keys, message = self._seal(), self._message(job)
        literal = set(job.rendered.literal_links) if job.rendered else set()
        hosts = job.target.link_hosts

        def rewrite(match: re.Match[str]) -> str:
            url = html_lib.unescape(match[3])
            if url not in literal and not host_listed(url, hosts):
                return match[0]
            link = tracking.click_url(self.base_url, keys, message, url)
            return f"{match[1]}{match[2]}{link}{match[2]}"

        body = LINK_HREF.sub(rewrite, body)
        pixel = tracking.open_url(self.base_url, keys, message)
        extra = f'<img src="{pixel}" width="1" height="1" alt="">'
        if marketing:
            extra = (
                f'<p style="font-size:12px"><a href="{self.unsubscribe_url(job)}">Unsubscribe</a>'
                f"</p>{extra}"
            )
        index = body.lower().rfind("</body>")
        return body + extra if index < 0 else body[:index] + extra + body[index:]


_UNSAFE_URL = re.compile(r"[\\\s\x00-\x1f\x7f]")


def host_listed(url: str, hosts: tuple[str, ...]) -> bool:
    """Whether ``url`` is an http(s) link to one of ``hosts``, read the way a browser reads it:
    what ``egress.check_url`` refuses (another scheme, userinfo), and anything a browser and
    ``urlsplit`` could disagree on (backslashes, whitespace, control characters), is not."""
    if not hosts or _UNSAFE_URL.search(url) or egress.check_url(url) is not None:
        return False
    host = (urlsplit(url).hostname or "").lower()
    return any(host == h or (h.startswith("*.") and host.endswith(h[1:])) for h in hosts)


class Smtp:
    def __init__(self, target: Target, *, tracking: EmailTracking, pool_size: int, timeout: float):
        self.target = target
        self.name = "smtp"
        self._tracking = tracking
        self._timeout = timeout
        self._idle: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
        for _ in range(pool_size):
            self._idle.put_nowait(self._connection())

    def _connection(self) -> aiosmtplib.SMTP:
        t = self.target
        tls = bool(t.setting("tls", False))
        return aiosmtplib.SMTP(
            hostname=str(t.setting("host", "localhost")),
            port=int(t.setting("port", 465 if tls else 587)),
            username=t.setting("username"),
            password=t.secret("password", required=False),
            use_tls=tls,
            start_tls=t.setting("starttls"),
            validate_certs=bool(t.setting("validate_certs", True)),
            timeout=self._timeout,
        )

    def message(self, job: Job) -> OutgoingEmail:
        """The email as bytes. Built with the compat32 MIME classes: the modern ``EmailMessage``
        re-parses every header through its registry and cost ~40 % of a send."""
        rendered = job.rendered
        if rendered is None:
            raise PermanentError("email needs a template")
        if not job.address:
            raise PermanentError("no address")
        recipient = valid_address("To", job.address, display_name=False)
        sender = rendered.from_ or str(self.target.require("from"))
        envelope_from = valid_address("From", sender, display_name=True)
        subject = checked("Subject", rendered.subject or "")
        if rendered.reply_to:
            valid_address("Reply-To", rendered.reply_to, display_name=True)
        html, text = rendered.html, rendered.text
        headers: list[tuple[str, str]] = []
        if self._tracking.enabled:
            if self.target.marketing:
                unsubscribe = self._tracking.unsubscribe_url(job)
                headers.append(("List-Unsubscribe", f"<{unsubscribe}>"))
                headers.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
                if text:
                    text = f"{text}\n\nUnsubscribe: {unsubscribe}\n"
            if html:
                html = self._tracking.decorate_html(job, html, self.target.marketing)
        msg: Message
        if html and text:
            msg = MIMEMultipart("alternative")
            msg.attach(MIMEText(text, "plain", "utf-8"))
            msg.attach(MIMEText(html, "html", "utf-8"))
        else:
            msg = MIMEText(html or text or "", "html" if html else "plain", "utf-8")
        message_id = f"<{_SAFE_ID.sub('.', job.idempotency_key)}@cairn>"
        msg["From"] = _header(sender)
        msg["To"] = recipient
        msg["Subject"] = _header(subject)
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = message_id
        msg["X-Cairn-Delivery-Id"] = job.idempotency_key
        if rendered.reply_to:
            msg["Reply-To"] = _header(rendered.reply_to)
        for name, value in headers:
            msg[name] = value
        return OutgoingEmail(
            sender=envelope_from,
            recipient=recipient,
            data=msg.as_bytes(policy=_UNFOLDED),
            message_id=message_id,
        )

    async def send(self, job: Job) -> SendOutcome:
        try:
            email = self.message(job)
        except (PermanentError, DocumentError) as exc:
            return Failed(reason=f"smtp: {exc}", retryable=False)
        conn = await self._idle.get()
        with client_span(
            "smtp sendmail",
            self.name,
            conn.hostname,
            conn.port,
            **{"network.protocol.name": "smtp"},
        ) as span:
            outcome = await self._sendmail(conn, email)
            mark_outcome(span, outcome)
            return outcome

    async def _sendmail(self, conn: aiosmtplib.SMTP, email: OutgoingEmail) -> SendOutcome:
        try:
            if not conn.is_connected:
                await conn.connect()
            await conn.sendmail(email.sender, [email.recipient], email.data)
            return Sent(email.message_id)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            return Failed(
                reason=f"smtp: recipient refused: {exc}",
                retryable=all(400 <= c < 500 for c in codes),
                bounced=any(c >= 500 for c in codes),
            )
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code >= 500:
                return Failed(reason=f"smtp: {exc.code} {exc.message}", retryable=False)
            await _close(conn)
            return Failed(reason=f"smtp: {exc.code} {exc.message}", retryable=True)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await _close(conn)
            return Failed(reason=f"smtp: {type(exc).__name__}: {exc}", retryable=True)
        finally:
            self._idle.put_nowait(conn)

    async def close(self) -> None:
        while not self._idle.empty():
            await _close(self._idle.get_nowait())


async def _close(conn: aiosmtplib.SMTP) -> None:
    if conn.is_connected:
        try:
            await asyncio.wait_for(conn.quit(), timeout=2)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            conn.close()
