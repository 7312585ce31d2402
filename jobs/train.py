"""`python -m jobs.train CONFIG [key=value ...]`: one training run, as `ray job submit` runs it.

    ray job submit --working-dir . -- python -m jobs.train jobs/configs/quickstart.yaml

Same code as `orchestrator train`; exit code 0 on success, 1 on a failed run, 2 on a config
error.
"""

import sys

from orchestrator.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
