#!/usr/bin/env bash
# Smoke run of a warren binary as a box runs it: `--version`, then a control node and an agent
# (process runtime) on a private loopback address, a service of two `sleep` replicas, checked
# running as processes. For a foreign binary give the wrapper that runs it, e.g.
#
#   scripts/smoke.sh target/aarch64-unknown-linux-gnu/release/warren qemu-aarch64 -L /usr/aarch64-linux-gnu
#
# Exits non-zero, with the reason and the nodes' logs, when any step fails or takes over 120 s.
set -euo pipefail

bin=$(realpath "$1")
shift
wrap=("$@")
ip=127.0.86.1
dir=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    # The agent leaves its workloads running on SIGTERM, as on a box; a smoke run removes them.
    pkill -f "sleep 86427" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
fail() {
    echo "smoke: FAILED: $*" >&2
    for log in "$dir"/*.log; do
        echo "--- $log" >&2
        tail -20 "$log" >&2
    done
    exit 1
}
warren() { "${wrap[@]}" "$bin" "$@"; }
# A node in the background: exec, so that $! is the node itself (under its wrapper).
node() { exec "${wrap[@]}" "$bin" "$@"; }
# wait_for WHAT COMMAND...: runs COMMAND every 0.2 s until it succeeds, for up to 120 s.
wait_for() {
    local what=$1 start=$SECONDS
    shift
    until "$@" >/dev/null 2>&1; do
        [ $((SECONDS - start)) -lt 120 ] || fail "$what (waited 120 s)"
        sleep 0.2
    done
    echo "smoke: $what ($((SECONDS - start)) s)"
}

start=$SECONDS
version=$(warren --version) || fail "warren --version"
echo "smoke: $version"
case "$version" in "warren "*" (commit "*) ;; *) fail "--version says: $version" ;; esac

node control init --data-dir "$dir/c" --name smoke-c --api $ip:7100 --quic $ip:7101 \
    --gossip $ip:7102 --metrics none --wireguard off >"$dir/control.log" 2>&1 &
pids+=($!)
export WARREN_CONFIG=$dir/c/admin.conf
wait_for "control node serving" test -e "$WARREN_CONFIG"
warren token create --role agent >"$dir/token"
# A box's first boot: `agent up` joins from its config file, in the same process (a join on
# the command line would exec `agent run`, which user-mode qemu cannot follow).
cat >"$dir/agent.yaml" <<YAML
data_dir: $dir/a
control: [$ip:7101]
token_file: $dir/token
name: smoke-a
site: lab
listen: {metrics: $ip:9191, gossip: $ip:7947, dns: $ip:5301}
wireguard: {mode: "off"}
YAML
node agent up --config "$dir/agent.yaml" >"$dir/agent.log" 2>&1 &
pids+=($!)
wait_for "agent joined and running" grep -q "running" "$dir/agent.log"
warren service create smoke --command "sleep 86427" --replicas 2 >/dev/null \
    || fail "service create"
running() {
    [ "$(warren service ps smoke -o json | grep -o '"running"' | wc -l)" -ge 2 ] &&
        [ "$(pgrep -fc 'sleep 86427')" -ge 2 ]
}
wait_for "two replicas running as processes" running
echo "smoke: passed in $((SECONDS - start)) s"
