"""DVC stage `study`: see dlpipe.stages.study."""

import sys

from dlpipe.stages import study
from dlpipe.stages.runner import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("study", study.run))
