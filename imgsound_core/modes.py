"""File modes: what the files and folders imgsound writes atomically get.

Atomic writes go through temporary files and folders, which `tempfile` creates private (0600 / 0700); renamed into
place as they are, a results folder shared with others or served by a web server would be unreadable. Everything
imgsound writes gets the mode an ordinary `open()` / `mkdir()` would give under the process's umask instead.
"""

from __future__ import annotations

import os


def umask_mode(directory: bool = False) -> int:
    """0o666 (files) or 0o777 (folders) less the process's umask: 0o644 / 0o755 with the usual 022."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask
