"""Secrets never reach a log: a filter on the log handlers that blanks bearer tokens.

casd itself never logs headers, but aiohttp's HTTP parser quotes the offending header line when
it refuses a request, and an exception message may carry anything a client sent. The filter
cleans every record (message and traceback) before any handler writes it.
"""

from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"

_SECRETS = (
    # An Authorization header, as a header line or inside the repr() of one.
    (re.compile(r"(?i)(authorization\s*:\s*)[^\r\n'\"]*"), rf"\1{REDACTED}"),
    (re.compile(r"(?i)(bearer\s+)[^\s'\"\\]+"), rf"\1{REDACTED}"),
    # A casd token wherever it turns up.
    (re.compile(r"casd_[A-Za-z0-9_-]+"), f"casd_{REDACTED}"),
)


def redact(text: str) -> str:
    """``text`` with every token and Authorization value replaced by ``[redacted]``."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    """Rewrites a record's message and traceback text without its secrets."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            # Formatters reuse a cached exc_text: fill it, cleaned, before any of them runs.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install(handlers: list[logging.Handler] | None = None) -> None:
    """Put the filter on ``handlers`` (default: every handler of the root logger), once."""
    for handler in logging.getLogger().handlers if handlers is None else handlers:
        if not any(isinstance(existing, RedactSecrets) for existing in handler.filters):
            handler.addFilter(RedactSecrets())
