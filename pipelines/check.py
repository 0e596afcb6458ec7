"""DVC stage `check` (runs first, every time): see dlpipe.stages.check."""

import sys

from dlpipe.stages.check import main

if __name__ == "__main__":
    sys.exit(main())
