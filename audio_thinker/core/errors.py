"""The base of every error whose message tells the user what to change (an option, a config key, an input file,
an endpoint): the CLI prints it as one line with exit code 2 and no traceback (app/cli/main.py). Each module
defines its own kind next to the code that raises it; the CLI needs only this base, so that catching them imports
none of those modules."""

from __future__ import annotations


class UserError(Exception):
    """What the user gave cannot work; the message is one line naming the option, key or file and the fix."""
