"""`python -m imgsound_core.cli`: the same as the `imgsound` command."""

import sys

from imgsound_core.cli import main

sys.exit(main())
