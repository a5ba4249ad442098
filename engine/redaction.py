"""Secrets (API keys, URL passwords and query values) never reach a log record, whatever logger emits it.

A record is scrubbed where it is made (``logging.setLogRecordFactory``), not by a handler's filter: that
way it holds for every logger (httpx and httpcore print response headers verbatim at DEBUG, so a server or
a proxy that echoes the key in a header would put it on stderr) and for every handler, including ones
added later. A record whose text held a secret is frozen to its scrubbed message (``args`` cleared); a
traceback that held one is stored pre-formatted and scrubbed. Records without a secret are left as made.

``register_secret`` is called where a secret enters the process: ``engine.settings.load_settings`` and
``QdrantClientStore.connect``. Values shorter than ``MIN_SECRET_CHARS`` are not registered (replacing every
"ab" in every log line would make logs unreadable and protects nothing).
"""

from __future__ import annotations

import logging
import threading
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

MASK = "***"
MIN_SECRET_CHARS = 4

_secrets: set[str] = set()
_lock = threading.Lock()
_installed = False


def register_secret(value: str | None) -> None:
    """Scrub ``value`` from every log record made from now on (and from ``redact``)."""
    if not value or len(value) < MIN_SECRET_CHARS:
        return
    with _lock:
        _secrets.add(value)
        _install()


def register_url_secrets(url: str | None) -> None:
    """Register the password and every query value of ``url`` (``?api-key=...``) as secrets."""
    if not url:
        return
    try:
        parts = urlsplit(url)
        password = parts.password
        values = [v for _, v in parse_qsl(parts.query, keep_blank_values=False)]
    except ValueError:
        return
    register_secret(password)
    for v in values:
        register_secret(v)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***`` (longest first)."""
    if not _secrets or not text:
        return text
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_url(url: str) -> str:
    """``url`` safe to show: no ``user:password@`` part, every query value masked (``?api-key=***``)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return redact(url)
    netloc = parts.netloc
    if parts.username is not None or parts.password is not None:
        host = parts.hostname or ""
        netloc = f"{host}:{port}" if port else host
    query = parts.query
    if query:
        query = "&".join(f"{k}={MASK}" if v else k for k, v in parse_qsl(query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub_record(record: logging.LogRecord) -> None:
    """Remove every registered secret from ``record`` in place (message, traceback, stack)."""
    if not _secrets:
        return
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: logging reports it at emit time; nothing of ours to show
        return
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info:
        text = logging.Formatter().formatException(record.exc_info)
        clean = redact(text)
        if clean != text:
            record.exc_info, record.exc_text = None, clean
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def _install() -> None:
    global _installed
    if _installed:
        return
    make = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        scrub_record(record)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
