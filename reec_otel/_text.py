"""Safe text for rows and span attributes.

Everything a job produces (messages, exception text, data) passes through here
before it reaches a span or a row, so that any value fits every supported
database: no NUL characters (PostgreSQL refuses them), no lone surrogates
(not encodable as UTF-8), and a length cap with a visible marker.
"""

from __future__ import annotations

import json
import math
import traceback
from typing import Any, Final

# Limits in characters. A character is at most 4 bytes in UTF-8, so the largest
# value (1 Mi characters) fits MEDIUMTEXT (16 MiB) on MariaDB and text on
# PostgreSQL and SQLite.
MAX_NAME_CHARS: Final = 255
MAX_MESSAGE_CHARS: Final = 32_768
MAX_EXCEPTION_CHARS: Final = 32_768
MAX_STACK_TRACE_CHARS: Final = 262_144
MAX_DATA_CHARS: Final = 262_144

_NUL: Final = "\x00"


def clean(value: str, limit: int) -> str:
    """Return *value* made storable everywhere and cut to *limit* characters.

    NUL becomes the visible text ``\\x00`` and lone surrogates become
    backslash escapes. A cut value ends with a marker saying how much was cut,
    and the marker counts within the limit.
    """
    if _NUL in value:
        value = value.replace(_NUL, "\\x00")
    if not value.isascii():
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(value) <= limit:
        return value
    # The marker for the whole length has the most digits any marker can have,
    # so keeping that much room always leaves space for the final marker.
    keep = max(limit - len(_marker(len(value))), 0)
    return (value[:keep] + _marker(len(value) - keep))[:limit]


def _marker(dropped: int) -> str:
    return f"…[truncated {dropped} characters]"


def safe_str(value: object, limit: int) -> str:
    """``str(value)``, cleaned and cut, even when ``__str__`` itself raises."""
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:
        text = _describe_unprintable(value)
    return clean(text, limit)


def _describe_unprintable(value: object) -> str:
    kind = type(value)
    return f"<unprintable {kind.__module__}.{kind.__qualname__} object>"


def qualified_name(kind: type) -> str:
    """``module.QualName`` of a class, the form stored in ``exception_type``."""
    return f"{kind.__module__}.{kind.__qualname__}"


def format_traceback(exc: BaseException, limit: int = MAX_STACK_TRACE_CHARS) -> str:
    """The full formatted traceback of *exc*: causes, contexts and groups included.

    Never raises: an exception whose ``__str__`` fails is shown by its type,
    which is what the standard library prints for it too.
    """
    try:
        text = "".join(traceback.format_exception(exc))
    except Exception:
        text = f"{qualified_name(type(exc))}: {_describe_unprintable(exc)}\n"
    return clean(text, limit)


def inner_exception(exc: BaseException) -> BaseException | None:
    """The exception behind *exc*: its ``__cause__``, else its ``__context__``."""
    return exc.__cause__ if exc.__cause__ is not None else exc.__context__


def to_json(value: Any, limit: int = MAX_DATA_CHARS) -> str:
    """Serialise job data to strict JSON; what JSON does not know becomes text.

    Non-finite numbers become the strings ``"NaN"``, ``"Infinity"`` and
    ``"-Infinity"``; keys become text. Data that cannot be serialised at all
    (nesting too deep) is replaced by an object saying why. A document longer
    than *limit* is replaced by a JSON object holding the cut text, so that the
    stored value is always valid JSON of at most *limit* characters.
    """
    try:
        text = _dumps(value)
    except (TypeError, ValueError):
        # Non-finite numbers, keys JSON refuses, or a cycle: normalise, then retry.
        try:
            text = _dumps(_normalised(value, _MAX_DEPTH))
        except Exception as exc:
            text = _dumps({"unserialisable": safe_str(exc, MAX_MESSAGE_CHARS)})
    except Exception as exc:  # nesting deeper than the interpreter's recursion limit
        text = _dumps({"unserialisable": safe_str(exc, MAX_MESSAGE_CHARS)})
    # Lone surrogates survive json.dumps; no database accepts them in JSON.
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    if len(text) <= limit:
        return text
    return _truncated_document(text, limit)


_MAX_DEPTH: Final = 200


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, ensure_ascii=False, allow_nan=False)


def _normalised(value: Any, depth: int) -> Any:
    """A copy of *value* that strict JSON accepts: finite numbers, text keys."""
    if depth <= 0:
        raise ValueError(f"job data is nested deeper than {_MAX_DEPTH} levels")
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {_key(k): _normalised(v, depth - 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalised(item, depth - 1) for item in value]
    return value


def _key(key: object) -> str | int | float | bool | None:
    if key is None or isinstance(key, str | int | bool):
        return key
    if isinstance(key, float):
        return key if math.isfinite(key) else str(key)
    return safe_str(key, MAX_NAME_CHARS)


def _truncated_document(text: str, limit: int) -> str:
    # Escaping inside the wrapper can lengthen the cut text (quotes double), so
    # shrink the cut until the whole document fits.
    keep = limit - 32
    while True:
        document = _dumps({"truncated": clean(text, max(keep, 0))})
        if len(document) <= limit or keep <= 0:
            return document
        keep = keep * limit // len(document) - 16


def _json_default(value: object) -> str:
    return safe_str(value, MAX_MESSAGE_CHARS)
