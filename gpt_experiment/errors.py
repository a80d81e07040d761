"""
# Errors a user can fix

Anything that goes wrong because of what a user typed or pointed us at (a config key, a value,
a data file) is raised as a `UserError`. The command-line entry points catch it and print its
message as one line with a non-zero exit status, instead of a traceback.
"""


class UserError(Exception):
    """A problem with the user's input; its message is shown as-is, on one line."""

    def __str__(self):
        # What the user typed is quoted in the message; a newline or another control character
        # in it is shown escaped, so that the message stays one line.
        return ''.join(c if c.isprintable() else repr(c)[1:-1] for c in super().__str__())


class LossNotFinite(Exception):
    """A loss that is NaN or infinite, found at a report; nothing is saved after it."""
