"""`python -m imgsound_core.cli`: the same as the `imgsound` command."""

from imgsound_core.cli import console_main

console_main()
