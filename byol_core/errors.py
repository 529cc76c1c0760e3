"""The one exception type for mistakes a user can fix (bad params, missing data, ...).

The CLI prints its message and exits non-zero without a traceback; anything else that
escapes is reported by the CLI as a one-line error too (see byol_core.cli).
"""


def brief(text: object, limit: int = 300) -> str:
    """Another library's message as one line, cut to ``limit`` characters, for quoting."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit] + " ..."


def printable(relative: str) -> str:
    """A path as it can be shown and stored: bytes that are not UTF-8 as backslash escapes."""
    if relative.isascii():  # the common case: the same string, no copy
        return relative
    return relative.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class ByolError(Exception):
    """A user-facing failure. The message names the file or key and says what to do."""
