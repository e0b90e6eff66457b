#!/usr/bin/env python3
"""How fast a killed agent is noticed, with real processes on one machine.

Starts one control node and N real `warren agent` processes on loopback, each agent on its own
address 127.2.x.y with its own --gossip, --dns and --metrics there, spread over --sites sites
(agent i in site s{i % sites}). Agents gossip within their site (and with the control node).
Once every agent's gossip sees its site and the control node alive, it measures the gossip bytes each agent sends per second (from the
agents' `warren_mesh_datagram_bytes_total{direction="tx"}`) over a steady window, then kills
one agent with SIGKILL and reports, counted from the kill:

- when each other agent of its site says dead by gossip (its
  `warren_mesh_members{liveness="dead"}` goes up by one), and when the last one does;
- when control's `warren node ls -o json` says the agent is `unreachable`.

Needs the release binary (`cargo build --release -p warren-cli`, or WARREN=path). Uses
127.0.0.1:17300-17302 for control and ports 17946 (gossip), 17353 (DNS), 17091 (metrics) on
each agent's address. Everything it starts is stopped on exit; data goes to a temp dir.

    scripts/detect-scenario.py            # N=100
    scripts/detect-scenario.py -n 20 --window 10
    scripts/detect-scenario.py --sites 1      # one site: every agent gossips with every other
"""

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTROL_API = "127.0.0.1:17300"
CONTROL_QUIC = "127.0.0.1:17301"
CONTROL_GOSSIP = "127.0.0.1:17302"
GOSSIP_PORT, DNS_PORT, METRICS_PORT = 17946, 17353, 17091
START = time.monotonic()


def log(message):
    print(f"{time.monotonic() - START:8.2f} s  {message}", flush=True)


def agent_ip(index):
    """127.2.x.y for agent 1..N: its own address, one per agent."""
    return f"127.2.{index // 250}.{index % 250 + 1}"


def metric(text, name, labels):
    """The value of `name{labels}` in a Prometheus text page (labels in any order), or None."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.index("}")]))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def scrape(ip):
    try:
        with urllib.request.urlopen(f"http://{ip}:{METRICS_PORT}/metrics", timeout=2) as reply:
            return reply.read().decode()
    except OSError:
        return ""


class Fleet:
    def __init__(self, warren, data_dir):
        self.warren = warren
        self.dir = data_dir
        self.procs = {}
        self.env = dict(os.environ, WARREN_CONFIG=os.path.join(data_dir, "c1", "admin.conf"))

    def spawn(self, name, args):
        out = open(os.path.join(self.dir, f"{name}.log"), "w")
        self.procs[name] = subprocess.Popen(
            [self.warren, *args], stdout=out, stderr=subprocess.STDOUT, env=self.env,
            start_new_session=True)

    def cli(self, *args):
        return subprocess.run([self.warren, *args], env=self.env, capture_output=True,
                              text=True, timeout=30)

    def wait_log(self, name, word, secs, give_up=True):
        """Until `name`'s log says `word`; False if it exited first and not `give_up`."""
        path = os.path.join(self.dir, f"{name}.log")
        end = time.monotonic() + secs
        while time.monotonic() < end:
            with open(path) as f:
                if word in f.read():
                    return True
            if self.procs[name].poll() is not None:
                if not give_up:
                    return False
                sys.exit(f"{name} exited early; see {path}")
            time.sleep(0.2)
        sys.exit(f"{name} did not say '{word}' within {secs} s; see {path}")

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def site_of(i, sites):
    return f"s{i % sites}"


def site_members(n, sites):
    """For agent 1..n: how many members its gossip should know (its site's agents, control)."""
    size = {}
    for i in range(1, n + 1):
        size[site_of(i, sites)] = size.get(site_of(i, sites), 0) + 1
    return {agent_ip(i): size[site_of(i, sites)] + 1 for i in range(1, n + 1)}


def start(fleet, n, sites):
    fleet.spawn("c1", ["control", "init", "--data-dir", os.path.join(fleet.dir, "c1"),
                       "--name", "c1", "--site", "central", "--api", CONTROL_API,
                       "--quic", CONTROL_QUIC, "--gossip", CONTROL_GOSSIP, "--metrics", "none"])
    fleet.wait_log("c1", "serving", 60)
    token = fleet.cli("token", "create", "--role", "agent").stdout.strip()
    for i in range(1, n + 1):
        ip = agent_ip(i)
        # A control node on a machine busy with hundreds of agents (and other builds) can miss
        # a join's 10 s deadline: the agent exits, and is started again, twice at most.
        for attempt in range(3):
            fleet.spawn(f"a{i}", [
                "agent", "join", "--data-dir", os.path.join(fleet.dir, f"a{i}-{attempt}"),
                "--control", CONTROL_QUIC, "--token", token, "--name", f"edge-{i}",
                "--site", site_of(i, sites), "--gossip", f"{ip}:{GOSSIP_PORT}",
                "--dns", f"{ip}:{DNS_PORT}", "--dns-upstream", "127.0.0.1:9",
                "--metrics", f"{ip}:{METRICS_PORT}"])
            if fleet.wait_log(f"a{i}", "running", 60, give_up=attempt == 2):
                break
            log(f"edge-{i} did not join (attempt {attempt + 1}); starting it again")
    log(f"control node and {n} agents running")


def all_metrics(pool, ips):
    return dict(zip(ips, pool.map(scrape, ips)))


def members(page, liveness):
    return metric(page, "warren_mesh_members", {"liveness": liveness}) or 0


def wait_converged(pool, expected, secs):
    """Until every agent's gossip knows its site's agents and the control node (`expected`, by
    agent address), none of them dead (suspect is a passing doubt; it is counted, not waited
    out)."""
    end = time.monotonic() + secs
    while time.monotonic() < end:
        pages = all_metrics(pool, list(expected))
        known = {ip: members(p, "alive") + members(p, "suspect") for ip, p in pages.items()}
        dead = sum(members(p, "dead") for p in pages.values())
        if all(known[ip] == expected[ip] for ip in expected) and dead == 0:
            pages = pages.values()
            suspect = sum(members(p, "suspect") for p in pages)
            return suspect
        time.sleep(1)
    sys.exit(f"gossip did not converge within {secs} s (known counts: {sorted(set(known.values()))}, "
             f"dead verdicts: {dead})")


def cpu_seconds(pid):
    """User + system CPU time of process `pid`, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def gossip_rate(pool, ips, window, pairs, control_pid):
    def tx(pages):
        return sum(metric(p, "warren_mesh_datagram_bytes_total", {"direction": "tx"}) or 0
                   for p in pages.values())

    def datagrams(pages):
        return sum(metric(p, "warren_mesh_datagrams_total", {"direction": "tx"}) or 0
                   for p in pages.values())

    before, t0 = all_metrics(pool, ips), time.monotonic()
    control_cpu = cpu_seconds(control_pid)
    dead_samples, suspect_samples, samples = 0, 0, 0
    while time.monotonic() - t0 < window:
        pages = all_metrics(pool, ips).values()
        dead_samples += sum(members(p, "dead") for p in pages)
        suspect_samples += sum(members(p, "suspect") for p in pages)
        samples += 1
        time.sleep(1)
    after, t1 = all_metrics(pool, ips), time.monotonic()
    control_cpu = cpu_seconds(control_pid) - control_cpu
    log(f"control node meanwhile: {100 * control_cpu / (t1 - t0):.1f} % of a core, "
        f"VmRSS {rss_mib(control_pid):.1f} MiB")
    per_agent = (tx(after) - tx(before)) / len(ips) / (t1 - t0)
    per_datagram = (tx(after) - tx(before)) / max(1, datagrams(after) - datagrams(before))
    log(f"gossip sent per agent, steady state over {t1 - t0:.1f} s: {per_agent:.0f} B/s "
        f"({per_agent / 1024:.1f} KiB/s), {per_datagram:.0f} B per datagram")
    log_by_type(before, after, len(ips), t1 - t0)
    log(f"meanwhile, over {samples} samples of every agent's view: {dead_samples / samples:.1f} "
        f"(agent, member) pairs dead and {suspect_samples / samples:.1f} suspect on average, "
        f"of {pairs}")


def log_by_type(before, after, n_agents, secs):
    """Where the bytes go: chitchat's messages sent per agent, by type, before sealing (a SYN is
    a digest of every member, an ACK a delta of changed key-values, a SYN-ACK both)."""
    parts = []
    for kind in ["syn", "syn_ack", "ack"]:
        def total(pages, name):
            return sum(metric(p, name, {"direction": "tx", "type": kind}) or 0
                       for p in pages.values())
        nbytes = total(after, "warren_mesh_gossip_message_bytes_total") - total(
            before, "warren_mesh_gossip_message_bytes_total")
        count = total(after, "warren_mesh_gossip_messages_total") - total(
            before, "warren_mesh_gossip_messages_total")
        parts.append(f"{kind} {nbytes / n_agents / secs:.0f} B/s ({count / n_agents / secs:.1f}/s, "
                     f"{nbytes / max(1, count):.0f} B each)")
    log("by message type, per agent: " + ", ".join(parts))


def log_rss(fleet, n):
    """Resident memory of the agent processes (VmRSS, and its anonymous part), in MiB."""
    fields = {"VmRSS:": [], "RssAnon:": []}
    for i in range(1, n + 1):
        proc = fleet.procs.get(f"a{i}")
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                for line in f:
                    if line.split(":")[0] + ":" in fields:
                        fields[line.split(":")[0] + ":"].append(int(line.split()[1]) / 1024)
        except (OSError, AttributeError):
            pass
    for name, values in fields.items():
        if values:
            values.sort()
            log(f"agent {name[:-1]} over {len(values)} agents: mean "
                f"{sum(values) / len(values):.1f} MiB, median {values[len(values) // 2]:.1f}, "
                f"max {values[-1]:.1f}")


def node_state(fleet, name):
    reply = fleet.cli("node", "ls", "-o", "json")
    if reply.returncode != 0:
        return None
    for entry in json.loads(reply.stdout):
        if entry["node"]["name"] == name:
            state = entry["node"]["state"]
            return state if isinstance(state, str) else next(iter(state))
    return None


def measure_kill(fleet, pool, n, sites, victim, timeout):
    """The victim's site's other agents are the ones whose gossip knows it."""
    survivors = [agent_ip(i) for i in range(1, n + 1)
                 if i != victim and site_of(i, sites) == site_of(victim, sites)]
    pages = all_metrics(pool, survivors)
    dead_before = {ip: members(p, "dead") for ip, p in pages.items()}
    # Some doubt is always somewhere with 100 agents on a busy machine: count a rise.
    suspect_before = {ip: members(p, "suspect") for ip, p in pages.items()}
    load = open("/proc/loadavg").read().split()[:3]
    log(f"--- kill -9 edge-{victim} (load average {' '.join(load)})")
    os.killpg(fleet.procs[f"a{victim}"].pid, signal.SIGKILL)
    killed = time.monotonic()
    seen_dead, suspect_first, unreachable = {}, None, None
    while time.monotonic() - killed < timeout:
        pages = all_metrics(pool, [ip for ip in survivors if ip not in seen_dead])
        now = time.monotonic() - killed
        for ip, page in pages.items():
            if not page:
                continue
            if suspect_first is None and members(page, "suspect") > suspect_before[ip]:
                suspect_first = now
            if members(page, "dead") > dead_before[ip]:
                seen_dead[ip] = now
        if unreachable is None and node_state(fleet, f"edge-{victim}") == "unreachable":
            unreachable = time.monotonic() - killed
        if len(seen_dead) == len(survivors) and unreachable is not None:
            break
        time.sleep(0.1)
    times = sorted(seen_dead.values())
    if suspect_first is not None:
        log(f"first agent whose gossip's suspect count rose: {suspect_first:.1f} s")
    if times:
        log(f"gossip says dead: first agent {times[0]:.1f} s, median "
            f"{times[len(times) // 2]:.1f} s, last of {len(times)}/{len(survivors)} {times[-1]:.1f} s")
    log(f"control says unreachable: {f'{unreachable:.1f} s' if unreachable else 'not seen'}")
    load = open("/proc/loadavg").read().split()[:3]
    log(f"load average after: {' '.join(load)} ({os.cpu_count()} cores)")
    ok = len(seen_dead) == len(survivors) and unreachable is not None
    return 0 if ok else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=100, help="agents (default 100)")
    parser.add_argument("--sites", type=int, default=4, help="sites (default 4)")
    parser.add_argument("--window", type=float, default=20, help="bytes/s window, s")
    parser.add_argument("--timeout", type=float, default=60, help="detection timeout, s")
    parser.add_argument("--keep", action="store_true", help="keep the data dir")
    parser.add_argument("--no-kill", action="store_true",
                        help="only measure traffic and memory, kill nobody")
    args = parser.parse_args()
    warren = os.environ.get("WARREN", os.path.join(ROOT, "target", "release", "warren"))
    if not os.access(warren, os.X_OK):
        sys.exit(f"no warren binary at {warren}: cargo build --release -p warren-cli")
    data_dir = tempfile.mkdtemp(prefix="warren-detect.")
    fleet = Fleet(warren, data_dir)
    code = 1
    try:
        start(fleet, args.n, args.sites)
        ips = [agent_ip(i) for i in range(1, args.n + 1)]
        expected = site_members(args.n, args.sites)
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            suspect = wait_converged(pool, expected, 180)
            log(f"every agent's gossip knows its site's agents and the control node "
                f"({min(expected.values())}-{max(expected.values())} members), none dead "
                f"({suspect:.0f} suspect pairs)")
            gossip_rate(pool, ips, args.window, sum(expected.values()), fleet.procs["c1"].pid)
            log_rss(fleet, args.n)
            if args.no_kill:
                code = 0
                return
            code = measure_kill(fleet, pool, args.n, args.sites, args.n // 2, args.timeout)
    finally:
        fleet.stop()
        if args.keep:
            log(f"data and logs kept in {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
