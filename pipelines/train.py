"""DVC stage `train@<arch>`: see dlpipe.stages.train."""

import sys

from dlpipe.stages import train
from dlpipe.stages.runner import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("train", train.run, with_arch=True))
