"""Record-derived text made safe for a terminal line in the human views (SPEC 5).

``show`` and ``status`` print what a record holds; any character that can move the
cursor, rearrange a line (bidirectional overrides such as U+202E), hide itself (U+200B)
or break the line (U+2028, U+2029) is shown as an escape instead. ``--json`` views never
pass through here: they stay exact JSON.
"""

from __future__ import annotations

ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
"""Control, format (bidi, zero-width), line and paragraph separators, lone surrogates."""


def _escaped(char: str) -> str:
    """Python's own spelling of a code point, e.g. ``"\\x1b"``, ``"\\u202e"``."""
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def visible(text: str) -> str:
    """``text`` with every control, format or separator character escaped, one line always.

    e.g. ``"ok\\u202egpj.exe"`` -> ``"ok\\\\u202egpj.exe"``; ``"a\\nb"`` -> ``"a\\\\x0ab"``; a
    backslash is doubled. Other text, spaces and non-ASCII letters included, is unchanged.
    """
    # A backslash is doubled, so that the text "\x1b" and an escaped ESC never look alike.
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if text.isprintable():  # the common case, answered in C: nothing to escape
        return text
    import unicodedata  # noqa: PLC0415 - only for text that holds something unprintable

    # isprintable() is also False for spaces other than " " (U+00A0), private use and
    # unassigned code points; those are shown as they are, only the categories above not.
    return "".join(
        _escaped(char)
        if not char.isprintable() and unicodedata.category(char) in ESCAPED_CATEGORIES
        else char
        for char in text
    )
