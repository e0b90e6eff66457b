#!/usr/bin/env bash
# Issue 6's "done when", from a shell on one machine: one control node and three agents, each
# with its own --gossip and --dns address on 127.0.0.x; a service with three replicas resolves
# to three addresses, an unknown name is NXDOMAIN; kill -9 one agent and watch it drop out of
# DNS (gossip says dead) and show as down in `node ls`. Needs `dig` (bind9-dnsutils) and the
# release binary (or WARREN=path/to/warren); uses 127.0.0.1:17200/17201 and 127.0.0.2-4.
set -euo pipefail
W=${WARREN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/warren}
D=$(mktemp -d /tmp/warren-mesh.XXXX)
log() { printf '%s  %s\n' "$(date +%T.%3N)" "$*"; }
wait_for() { # what, seconds, shell condition
  local what=$1 secs=$2; shift 2; local end=$((SECONDS+secs)) start=$SECONDS
  until eval "$*" >/dev/null 2>&1; do [ $SECONDS -lt $end ] || { log "TIMEOUT: $what"; exit 1; }; sleep 0.2; done
  log "ok: $what ($((SECONDS-start)) s)"; }
answers() { dig +short @127.0.0.1 -p 15302 "$1" A | sort | tr '\n' ' '; }
export W D; export -f answers
trap 'kill $(jobs -p) 2>/dev/null; pkill -f "sleep 100000" || true' EXIT

"$W" control init --data-dir $D/c1 --name c1 --site central --api 127.0.0.1:17200 --quic 127.0.0.1:17201 --metrics none > $D/c1.out 2>$D/c1.err &
wait_for "control serving" 30 grep -q serving $D/c1.out
export WARREN_CONFIG=$D/c1/admin.conf
for i in 2 3 4; do
  T=$("$W" token create --role agent)
  "$W" agent join --data-dir $D/a$i --control 127.0.0.1:17201 --token "$T" --name edge-$i --site lisbon \
    --metrics none --gossip 127.0.0.$i:17946 --dns 127.0.0.1:1530$i --dns-upstream 127.0.0.1:9 > $D/a$i.out 2>$D/a$i.err &
  eval "A$i=$!"
done
wait_for "three agents running" 30 'grep -q running $D/a2.out && grep -q running $D/a3.out && grep -q running $D/a4.out'
"$W" service create pinger --command "sleep 100000" --replicas 3
wait_for "pinger.warren resolves to three addresses" 60 '[ "$(answers pinger.warren)" = "127.0.0.2 127.0.0.3 127.0.0.4 " ]'
dig @127.0.0.1 -p 15302 pinger.warren A +noall +answer
status=$(dig @127.0.0.1 -p 15302 nosuch.warren A | grep -o 'status: [A-Z]*')
log "nosuch.warren: $status"; [ "$status" = "status: NXDOMAIN" ]
dig @127.0.0.1 -p 15302 1.pinger.warren A +short

log "--- kill -9 agent edge-4"
kill -9 $A4; killed=$SECONDS
wait_for "edge-4's replica gone from DNS (gossip: dead)" 60 '[ "$(answers pinger.warren)" = "127.0.0.2 127.0.0.3 " ]'
wait_for "node ls reports edge-4 down or unreachable" 90 \
  '"$W" node ls -o json | python3 -c "import json,sys; n=[x for x in json.load(sys.stdin) if x[\"node\"][\"name\"]==\"edge-4\"][0]; s=n[\"node\"][\"state\"]; g=(n.get(\"gossip\") or {}).get(\"liveness\"); sys.exit(0 if (s!=\"ready\" if isinstance(s,str) else True) or g==\"dead\" else 1)"'
"$W" node ls
log "done"
