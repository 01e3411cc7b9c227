"""The one exception type for bad input.

Every check of user input raises :class:`HandgradInputError` with a message that names the argument,
what was expected and what came.  It subclasses ``ValueError`` so ordinary ``except ValueError`` code
keeps working; the CLI turns it into one line on stderr and exit code 2.
"""


class HandgradInputError(ValueError):
    """Bad input to a handgrad function or command (argument named, expected vs. received)."""


def bad(argument: str, expected: str, received: str) -> HandgradInputError:
    """Build the standard message: ``argument: expected EXPECTED, got RECEIVED``."""
    return HandgradInputError(f"{argument}: expected {expected}, got {received}")
