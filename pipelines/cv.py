"""DVC stage `cv@<arch>`: see dlpipe.stages.cv."""

import sys

from dlpipe.stages import cv
from dlpipe.stages.runner import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("cv", cv.run, with_arch=True))
