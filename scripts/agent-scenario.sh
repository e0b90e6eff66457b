#!/usr/bin/env bash
# Issue 4's "done when", from a shell on one machine, with real processes: one control node
# and two agents at two sites; kill -9 the control node, a workload, an agent; restart the
# agent offline; bring control back and scale. Needs the release binary (cargo build --release)
# or WARREN=path/to/warren; uses ports 17100, 17101, 19091, 19092 on 127.0.0.1.
set -euo pipefail
W=${WARREN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/warren}
D=$(mktemp -d /tmp/warren-scenario.XXXX)
log() { printf '%s  %s\n' "$(date +%T.%3N)" "$*"; }
pids_of() { "$W" agent status --data-dir "$1" -o json | python3 -c 'import json,sys; s=json.load(sys.stdin); print(" ".join(str(r["pid"]) for r in s["replicas"] if r["state"]=="running" and r["pid"]))'; }
wait_for() { # what, seconds, shell condition
  local what=$1 secs=$2; shift 2; local end=$((SECONDS+secs))
  until eval "$*" >/dev/null 2>&1; do [ $SECONDS -lt $end ] || { log "TIMEOUT: $what"; exit 1; }; sleep 0.2; done; log "ok: $what"; }
count_is() { [ "$(pids_of "$1" | wc -w)" = "$2" ]; }
alive() { [ -d /proc/$1 ] && ! grep -q '^State:.*Z' /proc/$1/status; }
export W D; export -f pids_of count_is
trap 'kill $(jobs -p) 2>/dev/null; pkill -f "sleep 100000" || true' EXIT

"$W" control init --data-dir $D/c1 --name c1 --site central --api 127.0.0.1:17100 --quic 127.0.0.1:17101 --metrics none > $D/c1.out 2>$D/c1.err &
C=$!; wait_for "control serving" 30 grep -q serving $D/c1.out
export WARREN_CONFIG=$D/c1/admin.conf
T1=$("$W" token create --role agent); T2=$("$W" token create --role agent)
"$W" agent join --data-dir $D/a1 --control 127.0.0.1:17101 --token "$T1" --name edge-a --site lisbon --runtime process --metrics 127.0.0.1:19091 --gossip none --dns none > $D/a1.out 2>$D/a1.err &
A1=$!
"$W" agent join --data-dir $D/a2 --control 127.0.0.1:17101 --token "$T2" --name edge-b --site porto --runtime process --metrics 127.0.0.1:19092 --gossip none --dns none > $D/a2.out 2>$D/a2.err &
A2=$!
wait_for "agents running" 30 grep -q running $D/a2.out
"$W" service create sleeper --command "sleep 100000" --replicas 2
wait_for "one process per agent" 30 'count_is $D/a1 1 && count_is $D/a2 1'
P1=$(pids_of $D/a1); P2=$(pids_of $D/a2); log "pids: a1=$P1 a2=$P2"
"$W" service ps sleeper

log "--- kill -9 the control node"
kill -9 $C; sleep 2
alive $P1 && alive $P2 && log "ok: both workloads still run"
log "--- kill -9 a2's workload"
kill -9 $P2
wait_for "a2's workload back with a new pid" 30 'count_is $D/a2 1 && [ "$(pids_of $D/a2)" != "$P2" ]'
P2=$(pids_of $D/a2); log "a2 pid now $P2"

log "--- kill -9 agent a1 and its workload; agent run with control still down"
kill -9 $A1 $P1; sleep 1
"$W" agent run --data-dir $D/a1 --metrics 127.0.0.1:19091 > $D/a1b.out 2>$D/a1b.err &
A1=$!
wait_for "a1's workload runs again offline" 30 'count_is $D/a1 1 && [ "$(pids_of $D/a1)" != "$P1" ]'
"$W" agent status --data-dir $D/a1 -o json | python3 -c 'import json,sys; s=json.load(sys.stdin); print("agent status answers offline: revision", s["revision"], "connected", s["link"]["connected"])'
P1=$(pids_of $D/a1); log "a1 pid now $P1"

log "--- control run; service scale sleeper 4"
"$W" control run --data-dir $D/c1 > $D/c1b.out 2>$D/c1b.err &
C=$!; wait_for "control back" 30 grep -q serving $D/c1b.out
start=$(date +%s.%N)
"$W" service scale sleeper 4
wait_for "four processes" 60 'count_is $D/a1 2 && count_is $D/a2 2'
log "scale to 4 converged in $(python3 -c "print(round($(date +%s.%N)-$start,2))") s"
"$W" service ps sleeper
for p in $P1 $P2; do alive $p && log "ok: unchanged workload $p kept its pid" || { log "FAIL: $p is gone"; exit 1; }; done
pids_of $D/a1; pids_of $D/a2
curl -s 127.0.0.1:19092/metrics | grep -E '^warren_agent_(workloads\{state="running"|link_up|revision )'
"$W" node ls
"$W" service rm sleeper >/dev/null
log "done"
