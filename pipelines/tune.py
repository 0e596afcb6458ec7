"""DVC stage `tune@<arch>`: see dlpipe.stages.tune."""

import sys

from dlpipe.stages import tune
from dlpipe.stages.runner import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("tune", tune.run, with_arch=True))
