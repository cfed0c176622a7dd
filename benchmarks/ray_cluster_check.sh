#!/usr/bin/env bash
# Flower's simulation engine on an existing Ray cluster, checked on one machine: start a Ray head
# node and a second Ray node (1 CPU each), run benchmarks/federation_scale.py with its sites on both
# (run_simulation attaches through backend_config init_args {"address": HOST:PORT}), check that the
# ClientApps ran on both nodes, then stop the cluster and check that none of its processes is left.
# The cleanup runs on every exit (trap), failures included. See benchmarks/ray_cluster.md.
#
#   benchmarks/ray_cluster_check.sh [SITES] [ROUNDS]          (default 10 2; RAY_HEAD_PORT, default 6390)
#
# Everything runs in a private network namespace that has only loopback (unshare; as a normal user
# with --map-root-user): Ray's GCS, raylets and workers listen on every interface and Ray turns
# 127.0.0.1 into the machine's own address, so there is no other way to keep a local cluster off
# the network. The namespace also tells this script exactly which processes are its own.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${UGAFL_RAY_NETNS:-}" ]; then
  if [ "$(id -u)" = 0 ]; then flags=(--net); else flags=(--net --map-root-user); fi
  exec unshare "${flags[@]}" env UGAFL_RAY_NETNS=1 bash "${BASH_SOURCE[0]}" "$@"
fi
ip link set lo up

SITES=${1:-10}
ROUNDS=${2:-2}
PORT=${RAY_HEAD_PORT:-6390}
PY="$ROOT/.venv/bin/python"
RAY="$ROOT/.venv/bin/ray"
TMP=$(mktemp -d /tmp/ugrc-XXXX)  # short: Ray's socket paths must stay under 107 characters
export RAY_USAGE_STATS_ENABLED=0 RAY_DEDUP_LOGS=0 FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
export FLWR_HOME="$TMP/flwr-home"
SELF=$$

# Only shell builtins below: a helper process (tr, awk, readlink) would itself show up as ours.
cmdline() {  # the process's command line, arguments joined by spaces ('' for kernel threads and the gone)
  local -a args=()
  mapfile -d '' -t args < "/proc/$1/cmdline" 2>/dev/null || true
  REPLY="${args[*]}"
}

ours() {  # the live processes in this network namespace (ours by construction) but this script
  local d p stat rest
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [[ $p == "$SELF" || $p == "$BASHPID" ]] && continue
    [[ $d/ns/net -ef /proc/$SELF/ns/net ]] || continue
    read -r stat < "$d/stat" 2>/dev/null || continue
    rest=${stat##*) }
    [[ ${rest%% *} == Z ]] && continue  # a zombie: already dead, waiting for its parent
    cmdline "$p"
    [[ -n $REPLY ]] && echo "$p"
  done
}

foreign_ray() {  # Ray processes outside this namespace (someone else's): `ray stop` would kill them too
  local d
  for d in /proc/[0-9]*; do
    [[ $d/ns/net -ef /proc/$SELF/ns/net ]] && continue
    cmdline "${d#/proc/}"
    case "$REPLY" in
      *raylet*|*gcs_server*|ray::*|*site-packages/ray/*|*ray.util.client.server*) echo "${d#/proc/}" ;;
    esac
  done
}

cleanup() {
  local rc=$? left others i
  trap - EXIT INT TERM
  echo "== stopping the cluster"
  if [ -n "${BENCH_PID:-}" ] && kill -0 "$BENCH_PID" 2>/dev/null; then
    echo "the benchmark is still running (pid $BENCH_PID): SIGTERM to its process group"
    kill -TERM -- "-$BENCH_PID" 2>/dev/null || kill -TERM "$BENCH_PID" 2>/dev/null || true
    sleep 2
  fi
  others=$(foreign_ray); others=${others//$'\n'/ }
  if [ -z "$others" ]; then
    timeout 120 "$RAY" stop --grace-period 10 >"$TMP/ray-stop.log" 2>&1 || echo "ray stop exited $?"
    echo "ray stop: $(grep -c . "$TMP/ray-stop.log") line(s) of output, last: $(tail -1 "$TMP/ray-stop.log")"
  else
    echo "Ray processes of someone else are running (pids $others): not running 'ray stop' (it stops every"
    echo "Ray process on the machine by name); stopping ours by process id instead"
  fi
  left=$(ours); left=${left//$'\n'/ }
  if [ -n "$left" ]; then
    echo "still running: $left; SIGTERM"
    for p in $left; do cmdline "$p"; echo "  $p ${REPLY:0:150}"; done
    kill -TERM $left 2>/dev/null || true
    for i in $(seq 20); do left=$(ours); left=${left//$'\n'/ }; [ -z "$left" ] && break; sleep 0.5; done
    if [ -n "$left" ]; then echo "SIGKILL $left"; kill -KILL $left 2>/dev/null || true; sleep 1; fi
  fi
  left=$(ours); left=${left//$'\n'/ }
  if [ -n "$left" ]; then
    echo "LEFT RUNNING: $left"
    for p in $left; do cmdline "$p"; echo "  $p ${REPLY:0:150}"; done
    rc=1
  else
    echo "no process of the cluster is left"
  fi
  if [ "$rc" = 0 ]; then rm -rf "$TMP"; else echo "logs kept in $TMP"; fi
  exit "$rc"
}
trap cleanup EXIT INT TERM

echo "== head node: 127.0.0.1:$PORT, 1 CPU (temp dir $TMP)"
"$RAY" start --head --node-ip-address 127.0.0.1 --port "$PORT" --num-cpus 1 --include-dashboard false \
  --temp-dir "$TMP/head" --disable-usage-stats >"$TMP/head.log" 2>&1 || { cat "$TMP/head.log"; exit 1; }
grep -E "Local node IP|Ray runtime started" "$TMP/head.log" || true

echo "== second node: joins 127.0.0.1:$PORT with 1 CPU"
"$RAY" start --address "127.0.0.1:$PORT" --node-ip-address 127.0.0.1 --num-cpus 1 \
  --temp-dir "$TMP/node2" --disable-usage-stats >"$TMP/node2.log" 2>&1 || { cat "$TMP/node2.log"; exit 1; }
grep -E "Local node IP|Ray runtime started" "$TMP/node2.log" || true

"$RAY" status --address "127.0.0.1:$PORT" 2>&1 | grep -E "Active|node_|CPU" | head -8 || true
echo "listening sockets in this namespace:"
ss -ltn | awk 'NR > 1 {print "  " $4}' | sort | tr '\n' ' '; echo

echo "== benchmark: $SITES sites, $ROUNDS round(s), attached to the cluster"
set -m  # the benchmark in its own process group, so that cleanup can stop all of it
"$PY" "$ROOT/benchmarks/federation_scale.py" --sites "$SITES" --rounds "$ROUNDS" --offline none \
  --cpus-per-site 0.5 --ray-address "127.0.0.1:$PORT" --workdir "$TMP/work" --json "$TMP/result.json" &
BENCH_PID=$!
set +m
wait "$BENCH_PID"
BENCH_PID=

"$PY" - "$TMP/result.json" "$SITES" <<'EOF'
import json, sys

result = json.load(open(sys.argv[1]))["results"][0]
sites = int(sys.argv[2])
nodes, runs = result["ray"].get("nodes"), result["clientapp-runs-per-ray-node"]
print(f"Ray cluster seen by the simulation: {result['ray']}; ClientApp runs per node: {runs}")
assert result["sites-seen"] == sites, f"{result['sites-seen']} sites answered, expected {sites}"
assert nodes == 2, f"the simulation saw {nodes} Ray node(s), expected 2"
assert len(runs) == 2, f"ClientApps ran on {len(runs)} node(s), expected both"
print("OK: the simulation attached to the 2-node cluster and ran ClientApps on both nodes")
EOF
