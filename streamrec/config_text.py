"""Config values written as text: ``--set section.field=value`` and ``STREAMREC_*`` variables.

A list is a TOML array (``["a", "b"]``, ``[]``, ``[64, 32]``), the same array
with its quotes eaten by a shell (``[a, b]``), or comma-separated (``a,b``; empty
text is the empty list), quoted or not (``""``, ``"a,b"``). A string field takes the text as it is, unquoted if it
is one quoted TOML string. Numbers and booleans are left as text for the config's own
coercion. A list that reads as none of these raises :class:`ConfigError`
naming the field: its brackets or quotes never end up inside its values.
"""

from __future__ import annotations

import re
import tomllib
import typing
from typing import Any

from streamrec.errors import ConfigError

__all__ = ["parse_text"]

# One item of a bracketed list whose quotes the shell removed: `[user_id,item_id]`.
_BARE_WORD = re.compile(r"[^\s\"'\[\]{}=#,]+")
_QUOTES_OR_BRACKETS = re.compile(r"[\"'\[\]]")
_HOW = 'write a TOML array (["a", "b"]) or a comma list (a,b)'


def _toml_value(text: str) -> Any:
    """``text`` as one TOML value; TOMLDecodeError if it is not exactly one."""
    doc = tomllib.loads(f"v = {text}")
    if set(doc) != {"v"}:  # a newline in the text started another key
        raise tomllib.TOMLDecodeError("more than one value")
    return doc["v"]


def _bare_words(text: str) -> list[str] | None:
    """``[a, b]`` as ``["a", "b"]``: a TOML array after a shell removed its quotes."""
    if not (text.startswith("[") and text.endswith("]")):
        return None
    items = [item.strip() for item in text[1:-1].split(",")]
    if items and not items[-1]:
        items.pop()  # a trailing comma, as TOML allows
    if all(_BARE_WORD.fullmatch(item) for item in items):
        return items
    return None


def _list(where: str, text: str) -> list[Any]:
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            value = _toml_value(stripped)
        except tomllib.TOMLDecodeError:
            value = _bare_words(stripped)
            if value is None:
                raise ConfigError(f"{where}={text!r}: not a list; {_HOW}") from None
        if not isinstance(value, list):
            raise ConfigError(f"{where}={text!r}: not a list; {_HOW}")
        return value
    if _QUOTES_OR_BRACKETS.search(stripped):
        try:  # "" or "a,b": one quoted string, as a config file writes it
            value = _toml_value(stripped)
        except tomllib.TOMLDecodeError:
            value = None
        if isinstance(value, str) and not _QUOTES_OR_BRACKETS.search(value):
            return _list(where, value)
        try:  # "a","b": quoted items without the brackets
            return _toml_value(f"[{stripped}]")  # type: ignore[no-any-return]
        except tomllib.TOMLDecodeError:
            raise ConfigError(f"{where}={text!r}: quotes or brackets inside a comma list; "
                              f"{_HOW}") from None
    return [item.strip() for item in stripped.split(",") if item.strip()]


def parse_text(where: str, tp: Any, text: str) -> Any:
    """The value that ``text`` gives a field of type ``tp``, for the config's coercion.

    ``where`` names the field (``model.sparse_features``) in the error raised
    for text that is no value of that type's form.
    """
    if typing.get_origin(tp) is list:
        return _list(where, text)
    stripped = text.strip()
    if tp is str and stripped[:1] in ('"', "'"):
        # Never an error: the text may be a secret (a token), not to be echoed.
        try:
            value = _toml_value(stripped)
        except tomllib.TOMLDecodeError:
            return text
        return value if isinstance(value, str) else text
    return text
