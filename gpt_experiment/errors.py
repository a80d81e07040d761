"""
# Errors a user can fix

Anything that goes wrong because of what a user typed or pointed us at (a config key, a value,
a data file) is raised as a `UserError`. The command-line entry points catch it and print its
message as one line with a non-zero exit status, instead of a traceback.
"""


class UserError(Exception):
    """A problem with the user's input; its message is shown as-is, on one line."""
