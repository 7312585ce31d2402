#!/usr/bin/env bash
# A multi-node Ray cluster on this machine, on loopback, token auth on:
#   cluster/local.sh up --workers 2    # a head + 2 worker nodes; prints the submit command
#   cluster/local.sh status            # nodes and their resources
#   cluster/local.sh down              # stops only what `up` started (by the pids it kept)
# The same as `orchestrator cluster ...` (orchestrator/cluster.py); state in .ray-local/.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_AUTH_MODE=token
exec .venv/bin/orchestrator cluster "$@"
