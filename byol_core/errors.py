"""The one exception type for mistakes a user can fix (bad params, missing data, ...).

The CLI prints its message and exits non-zero without a traceback; anything else that
escapes is a bug and keeps its traceback.
"""


class ByolError(Exception):
    """A user-facing failure. The message names the file or key and says what to do."""
