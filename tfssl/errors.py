"""The one exception type for a user's mistake.

Entry points catch :class:`UserError` and print its message on one line (no
traceback) before exiting with status 2.  Raise it for anything the user can fix:
a bad flag value, a missing file, an incompatible run directory.  The message names
the flag or file and says what to do.
"""


class UserError(Exception):
    """A problem with the user's input, reported without a traceback."""
