"""DVC stage `prepare`: see dlpipe.stages.prepare."""

import sys

from dlpipe.stages import prepare
from dlpipe.stages.runner import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("prepare", prepare.run))
