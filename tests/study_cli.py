"""``python -m tests.study_cli ARGS``: ``driftbench ARGS`` with the study tests' toy preset registered.

The database tests start separate study processes with one identical command, as on two machines; this is
that command's entry point, so each trial takes about a second instead of the tiny-jpeg preset's ten.
"""

import sys

import torch

from harness.cli import main
from harness.presets import PRESETS
from tests.test_study import PRESET, TINY

if __name__ == "__main__":
    torch.set_num_threads(1)  # two processes share the machine's cores
    PRESETS[PRESET] = TINY
    sys.exit(main(sys.argv[1:]))
