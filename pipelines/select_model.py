"""DVC stage `select`: see dlpipe.stages.select. (Not named select.py: it would shadow the stdlib `select` module.)"""

import sys

from dlpipe.stages import select
from dlpipe.stages.runner import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("select", select.run))
