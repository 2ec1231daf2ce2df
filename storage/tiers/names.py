"""Validation of the names that become paths: dataset names, snapshot ids, object keys.

A name that could escape its folder or confuse a shell or an S3 listing is refused before any
byte is written: ``..``, a ``/`` where one segment is expected, absolute paths, backslashes,
control characters and empty segments.
"""

from __future__ import annotations

import re
import unicodedata

from tierflow.storage.errors import InvalidNameError

__all__ = ["check_key", "check_name"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _has_control(text: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in text)


def check_name(value: str, what: str = "name") -> str:
    """Check a single path segment such as a dataset name or snapshot id.

    Allowed: letters, digits, ``.``, ``_``, ``-``; starting with a letter or digit; at most 128.

    Raises
    ------
    InvalidNameError
        Naming ``what`` and the offending value.

    Examples
    --------
    >>> check_name("zebrafish-2026_run.3", "dataset")
    'zebrafish-2026_run.3'
    """
    if not isinstance(value, str) or not value:
        raise InvalidNameError(f"{what} must be a non-empty string, got {value!r}")
    if _has_control(value):
        raise InvalidNameError(f"{what} {value!r} contains control characters")
    if value in (".", "..") or ".." in value:
        raise InvalidNameError(f"{what} {value!r} contains '..'", hint="use letters, digits, '.', '_' and '-'")
    if "/" in value or "\\" in value:
        raise InvalidNameError(f"{what} {value!r} contains a path separator", hint="a name is one path segment")
    if not _NAME.match(value):
        raise InvalidNameError(
            f"{what} {value!r} is not allowed",
            hint="use 1-128 letters, digits, '.', '_' and '-', starting with a letter or digit",
        )
    return value


def check_key(key: str) -> str:
    """Check a relative object key (``a/b/c.tif``): no ``..``, no absolute path, no control chars.

    Raises
    ------
    InvalidNameError
        Naming the key and what is wrong with it.
    """
    if not isinstance(key, str) or not key:
        raise InvalidNameError(f"object key must be a non-empty string, got {key!r}")
    if _has_control(key):
        raise InvalidNameError(f"object key {key!r} contains control characters")
    if key.startswith("/") or re.match(r"^[A-Za-z]:", key):
        raise InvalidNameError(f"object key {key!r} is absolute; keys are relative to the tier root")
    if "\\" in key:
        raise InvalidNameError(f"object key {key!r} contains a backslash")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise InvalidNameError(f"object key {key!r} has an empty, '.' or '..' segment")
    return key
