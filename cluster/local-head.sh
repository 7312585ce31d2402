#!/usr/bin/env bash
# A one-node Ray cluster on loopback with token auth, for `ray job submit` on a laptop.
#   cluster/local-head.sh up      # starts the head, prints the job-submit command
#   cluster/local-head.sh down    # stops only the head this script started (by pid)
# A head with worker nodes: cluster/local.sh (orchestrator cluster up --workers N).
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=${STATE_DIR:-.ray-local}
PIDFILE=$STATE/head.pid   # "PID IDENTITY": down stops PID only while it is still that process
DASHBOARD_PORT=${DASHBOARD_PORT:-8265}
export RAY_AUTH_MODE=token
export PATH="$PWD/.venv/bin:$PATH"   # the job's `python` is this project's environment

# What tells a process apart from a later one with the same pid (after a reboot, say): the
# boot id and its start time (field 22 of /proc/PID/stat), as orchestrator/cluster.py records.
identity() {
  if [ -r /proc/self/stat ]; then
    [ -r "/proc/$1/stat" ] || return 0
    echo "$(cat /proc/sys/kernel/random/boot_id)/$(sed 's/.*) //' "/proc/$1/stat" | cut -d' ' -f20)"
  else
    ps -o lstart= -p "$1" 2>/dev/null || true
  fi
}
ours() {  # the pid file names a process this script started, and it still runs
  [ -f "$PIDFILE" ] || return 1
  read -r pid recorded <"$PIDFILE" || true
  [ -n "${recorded:-}" ] && [ "$(identity "$pid")" = "$recorded" ]
}

case "${1:-}" in
  up)
    (umask 077; mkdir -p "$STATE"); chmod 700 "$STATE"
    if ours; then
      echo "already running (pid $pid)"; exit 0
    fi
    [ -f ~/.ray/auth_token ] || ray get-auth-token --generate >/dev/null
    setsid ray start --head --block --node-ip-address=127.0.0.1 \
      --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
      --resources='{"orchestrator_head":1000}' \
      --temp-dir=/tmp/ray-orchestrator --disable-usage-stats >"$STATE/head.log" 2>&1 &
    pid=$!
    echo "$pid $(identity "$pid")" >"$PIDFILE"
    for _ in $(seq 60); do
      curl -fs "http://127.0.0.1:$DASHBOARD_PORT/api/version" >/dev/null 2>&1 && break
      sleep 1
    done
    echo "Ray head on 127.0.0.1 (pid $pid), token auth on (~/.ray/auth_token)."
    echo "  RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:$DASHBOARD_PORT \\"
    echo "    --working-dir . -- python -m jobs.sweep jobs/configs/quickstart.yaml \\"
    echo "    data.path=$PWD/data/digits.parquet tracking.uri=sqlite:///$PWD/mlflow.db"
    ;;
  down)
    [ -f "$PIDFILE" ] || { echo "not running"; exit 0; }
    if ! ours; then
      echo "pid ${pid:-?} is not the head this script started (it exited, or the pid was" \
           "reused); left alone" >&2
      rm -f "$PIDFILE"; exit 0
    fi
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    rm -f "$PIDFILE"; echo "stopped"
    ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
