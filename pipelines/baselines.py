"""DVC stage `baselines`: see dlpipe.stages.baselines."""

import sys

from dlpipe.stages import baselines
from dlpipe.stages.runner import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("baselines", baselines.run))
