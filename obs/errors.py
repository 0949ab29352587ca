"""Errors shared by the subcommands."""


class UsageError(Exception):
    """A problem the user can fix (bad config, missing binary): printed without a traceback."""
