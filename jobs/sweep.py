"""`python -m jobs.sweep CONFIG [key=value ...]`: the sweep, as `ray job submit` runs it.

    ray job submit --working-dir . -- python -m jobs.sweep jobs/configs/quickstart.yaml

Same code as `orchestrator sweep`; exit code 0 on success, 2 on a config error.
"""

import sys

from orchestrator.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
