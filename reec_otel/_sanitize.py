"""Sanitisers: the one place text is cleaned of secrets before anyone stores it.

A sanitiser is any callable taking a text and returning the text to keep. The
worker applies the one `configure(sanitizer=...)` installed to everything a job
produces (its message, its data, its exception's message, cause and stack
trace) before it sets them on the span, so the span, its exception event, its
exporters and the LogJob row all see the same cleaned text. Nothing is masked
unless a sanitiser is installed; :func:`redact_secrets` is a ready one.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from typing import Final

from reec_otel._diagnostics import RateLimitedLog

__all__ = ["Sanitizer", "redact_secrets"]

logger = logging.getLogger(__name__)

Sanitizer = Callable[[str], str]

REDACTED: Final = "[REDACTED]"
# What replaces a text whose sanitiser raised: the text itself may hold the secret.
SANITIZER_FAILED: Final = "[text withheld: the sanitizer failed]"

_SECRET_KEYS: Final = (
    r"password|passwd|pwd|secret|client_secret|token|access_token|refresh_token|"
    r"api[_-]?key|apikey|access[_-]?key|private[_-]?key|auth|authorization|credentials?"
)
# scheme://user:password@host  ->  scheme://user:[REDACTED]@host
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)[^/\s@]+(?=@)")
# A bearer token (8 characters or more: "the bearer of" is not one).
_BEARER = re.compile(r"(?i)\b(?P<head>bearer\s+)[A-Za-z0-9\-._~+/]{8,}=*")
# The credential after an Authorization header, whatever its scheme (Basic,
# Token, Digest...): the scheme word is kept, what follows it is masked.
_AUTHORIZATION = re.compile(
    r"(?i)(?P<head>\bauthorization\s*[:=]\s*"
    r"(?!(?:[A-Za-z][\w-]*\s+)?\[REDACTED\])(?:[A-Za-z][\w-]*\s+)?)[^\s,;&'\"\\]+"
)
# The secret word is a whole part of the key: db_password, client-secret, not author.
_KEY_NAME: Final = rf"(?:[A-Za-z0-9]+[_.-])*(?:{_SECRET_KEYS})(?:[_.-][A-Za-z0-9]+)*"
_KEY: Final = rf"\b{_KEY_NAME}\b"
# "password": <value> in JSON text; the value is found by _json_value_end.
_JSON_KEY = re.compile(rf'(?i)"{_KEY_NAME}"\s*:\s*')
_JSON_SCALAR = re.compile(r'"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|true\b|false\b')
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
# password="value", secret='value', 'password': 'value' (a Python dict repr): the
# value runs to its closing quote, escapes and the other quote included, or to
# the end of the text when that quote is missing.
_QUOTED_VALUE = re.compile(
    rf"(?i)(?P<head>{_KEY}[\"']?\s*[=:]\s*)(?P<quote>[\"'])"
    r"(?:(?!(?P=quote))[^\\]|\\[\s\S]?)*(?P<close>(?P=quote)?)"
)
# password=value, token: value, 'api_key': 123 (stops at space, quote, & ; ,);
# a value already masked by an earlier rule ("Bearer [REDACTED]", "Token
# [REDACTED]") and a JSON object are left alone.
_KEY_VALUE = re.compile(
    rf"(?i)(?P<head>{_KEY}'?\s*[=:]\s*)(?!(?:[A-Za-z][\w-]*\s+)?\[REDACTED\])(?![{{\[])"
    r"(?!(?:bearer|basic)\s)[^\s&;,'\"\\]+"
)

_lock = threading.Lock()
_installed: Sanitizer | None = None
_failures = 0
_warnings = RateLimitedLog(logger)


def redact_url_passwords(text: str) -> str:
    """Hide the password of every ``scheme://user:password@host`` in *text*."""
    return _URL_PASSWORD.sub(lambda m: m["head"] + REDACTED, text)


def redact_secrets(text: str) -> str:
    """A ready sanitiser for common secrets.

    Masks passwords in URLs, bearer tokens, the credential of an
    ``Authorization`` header whatever its scheme, and the value of
    ``key=value``, ``key: value``, ``key="value"`` or ``'key': 'value'`` pairs
    (and JSON members: strings, numbers, booleans, arrays) whose key names a
    secret: password, passwd, pwd, secret, token, api key, access key, private
    key, auth, authorization, credentials. Keeps everything else, and keeps
    JSON text valid JSON.
    """
    text = redact_url_passwords(text)
    text = _BEARER.sub(lambda m: m["head"] + REDACTED, text)
    text = _AUTHORIZATION.sub(lambda m: m["head"] + REDACTED, text)
    text = _redact_json_members(text)
    text = _QUOTED_VALUE.sub(lambda m: m["head"] + m["quote"] + REDACTED + m["close"], text)
    return _KEY_VALUE.sub(lambda m: m["head"] + REDACTED, text)


def _redact_json_members(text: str) -> str:
    """Replace the value of every JSON member named as a secret by a masked string."""
    parts: list[str] = []
    position = 0
    for match in _JSON_KEY.finditer(text):
        if match.start() < position:
            continue  # a key inside a value already masked
        end = _json_value_end(text, match.end())
        if end is None:
            continue
        parts += [text[position : match.end()], f'"{REDACTED}"']
        position = end
    parts.append(text[position:])
    return "".join(parts)


def _json_value_end(text: str, start: int) -> int | None:
    """Where the JSON string, number, boolean or array at *start* ends (None: not one)."""
    if text.startswith("[", start):
        return _json_array_end(text, start)
    scalar = _JSON_SCALAR.match(text, start)
    return scalar.end() if scalar else None


def _json_array_end(text: str, start: int) -> int | None:
    depth = 0
    position = start
    while position < len(text):
        char = text[position]
        if char == '"':
            string = _JSON_STRING.match(text, position)
            if string is None:
                return None
            position = string.end()
            continue
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth == 0:
                return position + 1
        position += 1
    return None


def install(sanitizer: Sanitizer | None) -> None:
    """Make *sanitizer* the one every Worker applies (None: no sanitising)."""
    global _installed
    if sanitizer is not None and not callable(sanitizer):
        raise TypeError(f"sanitizer must be a callable (str -> str); got {sanitizer!r}.")
    with _lock:
        _installed = sanitizer


def installed() -> Sanitizer | None:
    return _installed


def failures() -> int:
    """How many times the installed sanitiser raised or returned a non-string."""
    return _failures


def apply(text: str) -> str:
    """*text* through the installed sanitiser; never raises."""
    sanitizer = _installed
    if sanitizer is None:
        return text
    try:
        cleaned = sanitizer(text)
    except Exception:
        _failed("raised", exc_info=True)
        return SANITIZER_FAILED
    if not isinstance(cleaned, str):
        _failed(f"returned a {type(cleaned).__name__}, not a str")
        return SANITIZER_FAILED
    return cleaned


def apply_to_json(document: str) -> str:
    """A JSON text through the sanitiser, still valid JSON afterwards.

    A sanitiser that breaks the JSON gets its output kept as one JSON string.
    """
    if _installed is None:
        return document
    cleaned = apply(document)
    try:
        json.loads(cleaned)
    except ValueError:
        return json.dumps({"sanitized": cleaned}, ensure_ascii=False)
    return cleaned


def _failed(how: str, *, exc_info: bool = False) -> None:
    global _failures
    with _lock:
        _failures += 1
    _warnings.log(
        logging.WARNING,
        "failed",
        "The reec_otel sanitizer %s; the text was withheld (%d failures so far).",
        how,
        _failures,
        exc_info=exc_info,
    )
