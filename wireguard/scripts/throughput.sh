#!/usr/bin/env bash
# Throughput benchmark: plain veth vs a wireguard-go pair vs a Warren (warren-wireguard) pair,
# between two network namespaces. Prints a table; it is not a test and asserts nothing.
#
#   sudo wireguard/scripts/throughput.sh          # from the workspace root
#
# Measures, per path: iperf3 TCP with 1 and 4 streams (SECONDS_PER_RUN each), ping RTT and
# what the tunnel adds to it, CPU seconds per Gbit of the two tunnel processes (utime+stime
# from /proc/PID/stat, both ends), and the time from restarting one side to the first ping
# reply through the tunnel (the restarted side sending first, then the other side first).
# Skips with a reason when not root or a tool is missing.
set -euo pipefail

SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
TAG="wgb$$"
NS_A="$TAG-a"
NS_B="$TAG-b"
WORK=$(mktemp -d)
PIDS=()

skip() { echo "skipped: $*"; exit 0; }
[ "$(id -u)" = 0 ] || skip "not root (network namespaces need it)"
for tool in ip iperf3 ping wireguard-go wg python3 cargo; do
    command -v "$tool" >/dev/null || skip "$tool is not installed"
done
[ -c /dev/net/tun ] || skip "/dev/net/tun is missing"

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
( cd "$ROOT" && cargo build --release -q -p warren-wireguard --example wg-node )
NODE="$ROOT/target/release/examples/wg-node"

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 0.3
    ip netns del "$NS_A" 2>/dev/null || true
    ip netns del "$NS_B" 2>/dev/null || true
    rm -f "/var/run/wireguard/${TAG}a.sock" "/var/run/wireguard/${TAG}b.sock"
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- namespaces joined by one veth pair -----------------------------------------------------
ip netns add "$NS_A"; ip netns add "$NS_B"
ip -n "$NS_A" link add eth0 type veth peer name eth0 netns "$NS_B"
ip -n "$NS_A" addr add 192.168.60.1/24 dev eth0; ip -n "$NS_B" addr add 192.168.60.2/24 dev eth0
for ns in "$NS_A" "$NS_B"; do ip -n "$ns" link set eth0 up; ip -n "$ns" link set lo up; done
in_a() { ip netns exec "$NS_A" "$@"; }
in_b() { ip netns exec "$NS_B" "$@"; }

# --- Warren pair: 10.42.1.1 <-> 10.42.2.1 on port 51820 --------------------------------------
KA=$(wg genkey); KB=$(wg genkey)
PA=$(echo "$KA" | wg pubkey); PB=$(echo "$KB" | wg pubkey)
cat > "$WORK/a.conf" <<EOF
name warren0
address 10.42.1.1/16
listen_port 51820
private_key $KA
peer b $PB 10.42.2.0/24 192.168.60.2:51820 -
EOF
cat > "$WORK/b.conf" <<EOF
name warren0
address 10.42.2.1/16
listen_port 51820
private_key $KB
peer a $PA 10.42.1.0/24 192.168.60.1:51820 -
EOF
start_warren() { # side
    rm -f "$WORK/$1.conf.stats"
    RUST_LOG=warn ip netns exec "$TAG-$1" "$NODE" run "$WORK/$1.conf" 2>>"$WORK/$1.log" &
    eval "WARREN_$1=$!"; PIDS+=("$!")
    for _ in $(seq 100); do [ -f "$WORK/$1.conf.stats" ] && return; sleep 0.05; done
    echo "wg-node $1 did not start"; cat "$WORK/$1.log"; exit 1
}
start_warren a; start_warren b

# --- wireguard-go pair: 10.43.1.1 <-> 10.43.2.1 on port 51821 --------------------------------
GA=$(wg genkey); GB=$(wg genkey)
printf '[Interface]\nPrivateKey = %s\nListenPort = 51821\n[Peer]\nPublicKey = %s\nAllowedIPs = 10.43.2.0/24\nEndpoint = 192.168.60.2:51821\n' \
    "$GA" "$(echo "$GB" | wg pubkey)" > "$WORK/ga.conf"
printf '[Interface]\nPrivateKey = %s\nListenPort = 51821\n[Peer]\nPublicKey = %s\nAllowedIPs = 10.43.1.0/24\nEndpoint = 192.168.60.1:51821\n' \
    "$GB" "$(echo "$GA" | wg pubkey)" > "$WORK/gb.conf"
start_go() { # side address
    local ifname="${TAG}$1"
    WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 LOG_LEVEL=error \
        ip netns exec "$TAG-$1" wireguard-go -f "$ifname" >/dev/null 2>&1 &
    eval "GO_$1=$!"; PIDS+=("$!")
    for _ in $(seq 100); do [ -S "/var/run/wireguard/$ifname.sock" ] && break; sleep 0.05; done
    ip netns exec "$TAG-$1" wg setconf "$ifname" "$WORK/g$1.conf"
    ip -n "$TAG-$1" addr add "$2/16" dev "$ifname"
    ip -n "$TAG-$1" link set "$ifname" mtu 1420 up
}
start_go a 10.43.1.1; start_go b 10.43.2.1

# --- measurements ---------------------------------------------------------------------------
cpu_ticks() { # pids... -> utime+stime ticks summed
    local total=0
    for pid in "$@"; do
        # Fields after the ")" closing the command name: utime and stime are the 12th, 13th.
        total=$((total + $(cut -d')' -f2 "/proc/$pid/stat" | awk '{print $12 + $13}')))
    done
    echo "$total"
}
# iperf target streams pids... -> "gbits cpu_s_per_gbit"
iperf() {
    local target=$1 streams=$2; shift 2
    in_b iperf3 -s -1 -D >/dev/null 2>&1 || true; sleep 0.3
    local before after out gbits
    before=$(cpu_ticks "$@")
    out=$(in_a iperf3 -c "$target" -t "$SECONDS_PER_RUN" -P "$streams" -f g 2>&1 || true)
    after=$(cpu_ticks "$@")
    gbits=$(echo "$out" | awk '/receiver/ {rate=$(NF-2)} END {print rate+0}')
    python3 -c "
ticks, gbits, secs = $((after - before)), $gbits, $SECONDS_PER_RUN
hz = $(getconf CLK_TCK)
cpu = '%.2f' % (ticks / hz / (gbits * secs)) if gbits > 0 and ticks > 0 else '-'
print('%.2f %s' % (gbits, cpu))"
}
rtt() { in_a ping -q -c 50 -i 0.02 "$1" | awk -F/ '/^rtt/ {print $5}'; }
# first_reply netns target -> milliseconds until the first ping reply
first_reply() {
    local start end
    start=$(date +%s%N)
    ip netns exec "$1" ping -q -c 1 -i 0.01 -w 30 "$2" >/dev/null 2>&1 || { echo "none in 30 s"; return; }
    end=$(date +%s%N)
    echo "$(( (end - start) / 1000000 )) ms"
}

# Warm the tunnels up (handshakes) before measuring.
in_a ping -c 2 -W 2 10.42.2.1 >/dev/null; in_a ping -c 2 -W 2 10.43.2.1 >/dev/null

read -r VETH1 _ <<<"$(iperf 192.168.60.2 1)"
read -r VETH4 _ <<<"$(iperf 192.168.60.2 4)"
read -r GO1 GOCPU1 <<<"$(iperf 10.43.2.1 1 "$GO_a" "$GO_b")"
read -r GO4 GOCPU4 <<<"$(iperf 10.43.2.1 4 "$GO_a" "$GO_b")"
read -r WR1 WRCPU1 <<<"$(iperf 10.42.2.1 1 "$WARREN_a" "$WARREN_b")"
read -r WR4 WRCPU4 <<<"$(iperf 10.42.2.1 4 "$WARREN_a" "$WARREN_b")"
RTT_VETH=$(rtt 192.168.60.2); RTT_GO=$(rtt 10.43.2.1); RTT_WR=$(rtt 10.42.2.1)

# Restart side b of each tunnel; time the first reply with b sending first, then a first.
kill "$WARREN_b"; wait "$WARREN_b" 2>/dev/null || true; start_warren b
WR_FIRST_B=$(first_reply "$NS_B" 10.42.1.1)
kill "$WARREN_b"; wait "$WARREN_b" 2>/dev/null || true; start_warren b
WR_FIRST_A=$(first_reply "$NS_A" 10.42.2.1)
kill "$GO_b"; wait "$GO_b" 2>/dev/null || true; start_go b 10.43.2.1
GO_FIRST_B=$(first_reply "$NS_B" 10.43.1.1)
kill "$GO_b"; wait "$GO_b" 2>/dev/null || true; start_go b 10.43.2.1
GO_FIRST_A=$(first_reply "$NS_A" 10.43.2.1)

python3 - <<EOF
rows = [
    ("plain veth", $VETH1, $VETH4, "-", "-", $RTT_VETH),
    ("wireguard-go 0.0.20220316", $GO1, $GO4, "$GOCPU1", "$GOCPU4", $RTT_GO),
    ("warren-wireguard", $WR1, $WR4, "$WRCPU1", "$WRCPU4", $RTT_WR),
]
print("iperf3 TCP, ${SECONDS_PER_RUN} s per run, two namespaces on one veth pair, $(nproc) cores, load average $(cut -d' ' -f1 /proc/loadavg) at the end")
print("CPU s/Gbit: utime+stime of both tunnel processes per Gbit carried; RTT: ping average")
print("%-26s %11s %11s %13s %13s %9s %9s" % ("path", "1 stream", "4 streams", "CPU s/Gbit 1", "CPU s/Gbit 4", "RTT ms", "+RTT ms"))
for name, one, four, cpu1, cpu4, rtt in rows:
    added = "-" if name == "plain veth" else "%.3f" % (rtt - $RTT_VETH)
    print("%-26s %6.2f Gb/s %6.2f Gb/s %13s %13s %9.3f %9s" % (name, one, four, cpu1, cpu4, rtt, added))
def ratio(a, b):
    return "%.2fx" % (a / b) if b else "-"
print()
print("warren / wireguard-go: 1 stream %s, 4 streams %s" % (ratio($WR1, $GO1), ratio($WR4, $GO4)))
print("warren / plain veth:   1 stream %s, 4 streams %s" % (ratio($WR1, $VETH1), ratio($WR4, $VETH4)))
print("(wireguard-go 0.0.20220316 predates its TUN and UDP offloads; warren-wireguard uses both)")
print()
print("first ping reply after restarting side b:")
print("  warren-wireguard: b sends first %s; a sends first %s" % ("$WR_FIRST_B", "$WR_FIRST_A"))
print("  wireguard-go:     b sends first %s; a sends first %s" % ("$GO_FIRST_B", "$GO_FIRST_A"))
EOF
