"""Calling the `imgsound` command in-process and checking its user-facing errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from imgsound_core.cli import main


@dataclass(frozen=True)
class Outcome:
    """What one `imgsound` invocation returned."""

    code: int
    out: str
    err: str


def run_main(capsys: pytest.CaptureFixture[str], *args: str | Path) -> Outcome:
    """Call `main` in-process; argparse's own exits (usage errors, --help) become exit codes too."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def assert_user_error(outcome: Outcome, *words: str) -> str:
    """Exit code 2 and exactly one stderr line, `imgsound: error: …`, naming `words`; returns the message."""
    assert outcome.code == 2, outcome
    assert "Traceback" not in outcome.err
    lines = outcome.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgsound: error: "), outcome.err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]
