"""DVC stage `fetch`: see dlpipe.stages.fetch."""

import sys

from dlpipe.stages import fetch
from dlpipe.stages.runner import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("fetch", fetch.run))
