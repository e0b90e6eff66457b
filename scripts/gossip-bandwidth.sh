#!/usr/bin/env bash
# Gossip traffic of real processes, as a fleet runs them: one control node and N agents
# (default 50), each its own `warren` process with production timers, gossiping on 127.0.1.x.
# Once every agent knows every member and sees none dead, samples each agent's sealed bytes sent
# (warren_mesh_datagram_bytes_total{direction="tx"}) SECS apart (default 30) and prints the
# mean, min and max per agent in bytes/s, then the members each agent sees by liveness.
# Needs the release binary (cargo build --release) or WARREN=path/to/warren; uses
# 127.0.0.1:17300-17302 and 127.0.1.1-N:17946 (gossip) and :17990 (metrics).
set -euo pipefail
N=${1:-50}
SECS=${2:-30}
W=${WARREN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/warren}
D=$(mktemp -d /tmp/warren-gossip-bw.XXXX)
[ -z "${KEEP:-}" ] || echo "keeping $D"
log() { printf '%s  %s\n' "$(date +%T)" "$*"; }
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$D"' EXIT

metric() { # addr, metric line prefix -> value (0 when absent)
  curl -s "http://$1/metrics" | awk -v m="$2" 'index($0, m) == 1 && !/^#/ { print $2; found=1 } END { if (!found) print 0 }'
}

"$W" control init --data-dir "$D/c1" --name c1 --site central --api 127.0.0.1:17300 \
  --quic 127.0.0.1:17301 --gossip 127.0.0.1:17302 --metrics none > "$D/c1.out" 2> "$D/c1.err" &
until grep -q serving "$D/c1.out" 2> /dev/null; do sleep 0.2; done
export WARREN_CONFIG=$D/c1/admin.conf
for i in $(seq 1 "$N"); do
  "$W" token create --role agent > "$D/t$i"
  "$W" agent join --data-dir "$D/a$i" --control 127.0.0.1:17301 --token-file "$D/t$i" \
    --name "edge-$i" --site lisbon --gossip "127.0.1.$i:17946" --metrics "127.0.1.$i:17990" \
    --dns none > "$D/a$i.out" 2> "$D/a$i.err" &
done
log "control and $N agents started; waiting until every agent knows all $((N + 1)) members and sees none dead"
deadline=$((SECONDS + 300))
while :; do
  converged=0
  for i in $(seq 1 "$N"); do
    alive=$(metric "127.0.1.$i:17990" 'warren_mesh_members{liveness="alive"')
    suspect=$(metric "127.0.1.$i:17990" 'warren_mesh_members{liveness="suspect"')
    [ "$((${alive%.*} + ${suspect%.*}))" = "$((N + 1))" ] && converged=$((converged + 1))
  done
  [ "$converged" = "$N" ] && break
  [ $SECONDS -lt $deadline ] || { log "did not converge in 300 s: $converged of $N agents know everyone alive or suspect"; exit 1; }
  sleep 2
done
log "converged; letting the initial transfer settle"
sleep 10
declare -a before
for i in $(seq 1 "$N"); do before[$i]=$(metric "127.0.1.$i:17990" 'warren_mesh_datagram_bytes_total{direction="tx"'); done
sleep "$SECS"
rates=()
for i in $(seq 1 "$N"); do
  after=$(metric "127.0.1.$i:17990" 'warren_mesh_datagram_bytes_total{direction="tx"')
  rates+=("$(( (${after%.*} - ${before[$i]%.*}) / SECS ))")
done
printf '%s\n' "${rates[@]}" | sort -n | awk -v n="$N" -v s="$SECS" '
  { sum += $1; v[NR] = $1 }
  END { printf "%d agents, %d s: gossip sent per agent: mean %d B/s, min %d, max %d\n", n, s, sum / NR, v[1], v[NR] }'
for l in alive suspect dead; do
  total=0
  for i in $(seq 1 "$N"); do
    c=$(metric "127.0.1.$i:17990" "warren_mesh_members{liveness=\"$l\"")
    total=$((total + ${c%.*}))
  done
  printf '%s=%d ' "$l" "$total"
done
echo "(member pairs, summed over agents)"
