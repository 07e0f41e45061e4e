"""The one error a command raises for a user's mistake or a missing service.

``driftline.cli`` prints it as one line on stderr (``driftline <command>: <message>``) and
exits with status 2, the same status argparse uses for a bad flag: no traceback, which
would hide the one line that says what to fix.
"""

from __future__ import annotations

EXIT_USAGE = 2


class CommandError(Exception):
    """What went wrong, in one line a user can act on."""
