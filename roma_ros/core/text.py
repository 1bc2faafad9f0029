"""Strings that came from outside (a publisher, a file, a user) made safe to log.

An ``Image.encoding`` of ``"x\\n[FATAL] ..."`` would forge a log line, and a 1 MB one would be
copied into every /diagnostics message. Everything echoed into logs, ``last_error`` or a
service answer goes through ``printable``: control characters are escaped (a newline becomes
the two characters ``\\n``) and the result is cut to a stated length.
"""
from __future__ import annotations

import unicodedata

# A single field a publisher or user controls (encoding, format, frame_id, a file name).
FIELD_LIMIT = 200
# A whole message built around such fields (an error line, last_error in /diagnostics).
MESSAGE_LIMIT = 1000

_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in _SHORT:
        return _SHORT[char]
    if unicodedata.category(char)[0] == "C":  # control, format (bidi overrides), surrogate, unassigned
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
    return char


def printable(text: object, limit: int = FIELD_LIMIT) -> str:
    """``str(text)`` with control characters escaped, at most ``limit`` characters of it kept;
    a cut string ends in ``... (N more characters)``. Escaping twice changes nothing more."""
    text = str(text)
    parts: list[str] = []
    length = 0
    for used, char in enumerate(text[: limit + 1]):  # escaping never shortens a character
        escaped = _escape(char)
        if length + len(escaped) > limit:
            return "".join(parts) + f"... ({len(text) - used} more characters)"
        parts.append(escaped)
        length += len(escaped)
    return "".join(parts)
