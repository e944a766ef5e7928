"""Whether a process id (from a stack's state file) names a process that is running."""

from __future__ import annotations

import os


def alive(pid: object) -> bool:
    """True for a running process; False for anything else, a missing or malformed id too."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True
