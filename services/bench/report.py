"""The results table printed by `switchboard bench` (the JSON holds every number; this is the summary)."""

from __future__ import annotations

from typing import Any

Result = dict[str, Any]
# A step or wave measured while the whole machine was at least this busy waited for cores: its
# latency is the machine's as much as the cluster's (the load generator shares the CPUs).
BUSY_PCT = 90.0
# A load generator whose own event loop ran this late (p99) read its deliveries that late: the
# latency it measured includes its own wait, not only the cluster's.
LOADGEN_LAG_MS = 10.0
# A server process that waited for a CPU this share of a step (runnable, not running) spent that
# time in no queue of its own: the step's latency includes it.
WAIT_PCT = 10.0
# A load generator worker on a CPU or waiting for one this share of a step had no time to spare:
# it read late because it could not keep up, and the step measured it as much as the cluster.
LOADGEN_SATURATED_PCT = 90.0


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [["-" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _mib(kb: int | None) -> str | None:
    return None if kb is None else f"{kb / 1024:.1f}"


def steps_table(steps: list[Result]) -> str:
    rows = []
    for s in steps:
        lat, srv = s["latency_ms"], s["servers"]
        rows.append([s["k"], s["rate"], s["sent"], s["deliveries_per_s"], lat["p50"], lat["p99"], lat["max"],
                     s["loss"], s["duplicates"], s["out_of_order"] + s["offset_out_of_order"],
                     srv["cpu_s"], srv["cpu_us_per_delivery"], srv.get("machine_busy_pct"),
                     s["loadgen_loop_lag_ms"]["p99"], "OK" if s["sustained"] else "FAIL"])
    return table(["step", "rate/s", "sent", "deliv/s", "p50 ms", "p99 ms", "max ms", "loss", "dup", "ooo",
                  "srv CPU s", "µs/deliv", "machine %", "gen lag ms", "result"], rows)


def busy_note(windows: list[Result], what: str) -> str | None:
    """A warning naming the steps (or waves) measured on a machine with no CPU to spare."""
    busy = [str(w["k"]) for w in windows if (w["servers"].get("machine_busy_pct") or 0) >= BUSY_PCT]
    if not busy:
        return None
    return (f"the machine was at least {BUSY_PCT:.0f} % busy (all its CPUs, the load generator included) "
            f"in {what} {', '.join(busy)}: latency there includes waiting for a core")


def loadgen_lag_note(steps: list[Result]) -> str | None:
    """A warning naming the steps whose load generator read late (its own loop lag, p99)."""
    late = [f"{s['k']} ({s['loadgen_loop_lag_ms']['p99']} ms)" for s in steps
            if (s["loadgen_loop_lag_ms"]["p99"] or 0) > LOADGEN_LAG_MS]
    if not late:
        return None
    return (f"the load generator's own event loop ran more than {LOADGEN_LAG_MS:.0f} ms late (p99, "
            f"\"gen lag\") in step {', '.join(late)}: deliveries waited that long in its sockets "
            "before it read them, and their latency includes that wait (run it on other cores or "
            "another machine for the cluster's own)")


def lag_table(steps: list[Result]) -> str | None:
    """Per step, from the servers' own histograms: each edge's delivery latency p99 (publish
    accepted -> frame written: the cluster's part of the latency the clients saw) and each
    process's event loop lag p99, beside the load generator's own lag."""
    edges = sorted({n for s in steps for n in s.get("edge_delivery_p99_ms", {})})
    names = sorted({n for s in steps for n in s.get("server_loop_lag_p99_ms", {})})
    if not names:
        return None
    rows = [[s["k"], s["latency_ms"]["p99"], *(s["edge_delivery_p99_ms"].get(n) for n in edges),
             *(s["server_loop_lag_p99_ms"].get(n) for n in names), s["loadgen_loop_lag_ms"]["p99"]]
            for s in steps]
    return ("p99 per step, ms: clients (as above); inside an edge (publish accepted -> frame written); "
            "event loop lag of each server process and of the load generator (gen). Server values "
            "are the upper bound of their histogram bucket:\n"
            + table(["step", "clients", *(f"{n} deliv" for n in edges), *(f"{n} lag" for n in names),
                     "gen lag"], rows))


def wait_table(steps: list[Result]) -> str | None:
    """Per step, the share of it each server process and the load generator (per worker) waited
    for a CPU, and the machine's CPU pressure (some task waiting); None when nothing was read."""
    names = sorted({p["name"] for s in steps for p in s["servers"]["processes"] if p.get("wait_pct") is not None})
    if not names:
        return None
    rows = []
    for s in steps:
        waits = {p["name"]: p.get("wait_pct") for p in s["servers"]["processes"]}
        rows.append([s["k"], s["latency_ms"]["p99"], s["servers"].get("machine_cpu_pressure_pct"),
                     *(waits.get(n) for n in names), s.get("loadgen_wait_pct"), s.get("loadgen_cpu_pct")])
    return ("waiting for a CPU, % of each step: the machine (some task waiting), each server process, "
            "the load generator (per worker, beside its own CPU %):\n"
            + table(["step", "p99 ms", "machine", *(f"{n} wait" for n in names), "gen wait", "gen CPU"], rows))


def wait_note(steps: list[Result]) -> str | None:
    """A warning naming the steps in which a server process waited long for a CPU."""
    slow = []
    for s in steps:
        worst = max((p for p in s["servers"]["processes"] if p.get("wait_pct") is not None),
                    key=lambda p: p["wait_pct"], default=None)
        if worst is not None and worst["wait_pct"] >= WAIT_PCT:
            slow.append(f"{s['k']} ({worst['name']} {worst['wait_pct']} %)")
    if not slow:
        return None
    return (f"server processes waited for a CPU at least {WAIT_PCT:.0f} % of step {', '.join(slow)}: "
            "the machine has fewer cores than its processes want, and that wait is part of the latency")


def loadgen_saturated_note(steps: list[Result]) -> str | None:
    """A warning naming the steps whose load generator workers were runnable nearly all along."""
    full = []
    for s in steps:
        on, wait = s.get("loadgen_cpu_pct"), s.get("loadgen_wait_pct")
        if on is not None and wait is not None and on + wait >= LOADGEN_SATURATED_PCT:
            full.append(f"{s['k']} ({on} % on a CPU + {wait} % waiting for one)")
    if not full:
        return None
    return (f"the load generator's workers were running or waiting for a CPU at least "
            f"{LOADGEN_SATURATED_PCT:.0f} % of step {', '.join(full)}: they could not keep up, so "
            "that step measured the load generator as much as the cluster (give it more workers, "
            "other cores or another machine)")


def processes_table(servers: Result, title: str) -> str:
    rows = [[p["name"], p["pid"], p["cpu_s"], p["cpu_pct"], p.get("wait_pct"), _mib(p["rss_kb"])]
            for p in servers["processes"]]
    busy = servers.get("machine_busy_pct")
    if busy is not None:
        title = f"{title.removesuffix(':')} (machine {busy} % busy):"
    return f"{title}\n" + table(["process", "pid", "CPU s", "CPU %", "wait %", "RSS MiB"], rows)


def render(result: Result) -> str:
    scenario = result["scenario"]
    out = [f"switchboard bench {scenario}  ({result['config_line']})"]
    c = result.get("connect")
    if c:
        out.append(f"connect+auth: {c['established']}/{c['attempted']} in {c['wall_s']} s, "
                   f"p50 {c['connect_ms']['p50']} ms, p99 {c['connect_ms']['p99']} ms, max {c['connect_ms']['max']} ms")
    if scenario == "fanout" and "sessions_spanning_edges" in result:
        out.append(f"sessions whose members are on more than one edge: {result['sessions_spanning_edges']}")
    if scenario in ("fanout", "stream"):
        steps = result["steps"]
        out.append(steps_table(steps))
        for note in (busy_note(steps, "step"), loadgen_lag_note(steps), lag_table(steps),
                     wait_note(steps), loadgen_saturated_note(steps), wait_table(steps)):
            if note:
                out.append(note)
        if steps:
            out.append(processes_table(steps[-1]["servers"], f"server processes during step {steps[-1]['k']}:"))
        if scenario == "fanout":
            out.append(f"highest sustained rate: {result['highest_sustained']} msgs/s "
                       f"(p99 <= {result['p99_limit_ms']} ms, no loss)")
            check = result.get("check")
            if check:
                verdict = "met" if check["met"] else "not met" + ("" if check["sustained"] else " (not sustained)")
                out.append(f"p99 at {check['fraction']:.0%} of it: step {check['k']} at {check['rate']} msgs/s, "
                           f"p99 {check['p99_ms']} ms (target <= {check['p99_target_ms']} ms): {verdict}")
    elif scenario == "idle":
        mem = result["memory"]
        out.append(table(["tier", "processes", "RSS before MiB", "RSS after MiB", "KiB per 1k conns"],
                         [[t["tier"], t["processes"], _mib(t["rss_before_kb"]), _mib(t["rss_after_kb"]),
                           t["kb_per_1k_connections"]] for t in mem["tiers"]]))
        out.append(f"held {result['alive_after_hold']}/{mem['connections']} connections; heartbeats "
                   f"{result['heartbeat_replies']}/{result['heartbeats_sent']} answered")
        out.append(processes_table(result["servers"], "server processes over the hold:"))
    elif scenario == "storm":
        rows = [[w["k"], w["attempted"], w["established"], w["failed"], w["connects_per_s"],
                 w["connect_ms"]["p50"], w["connect_ms"]["p99"], w["connect_ms"]["max"],
                 w["servers"]["cpu_s"], w["servers"].get("machine_busy_pct"),
                 "OK" if w["sustained"] else "FAIL"] for w in result["waves"]]
        out.append(table(["wave", "tried", "ok", "failed", "conn/s", "p50 ms", "p99 ms", "max ms",
                          "srv CPU s", "machine %", "result"], rows))
        note = busy_note(result["waves"], "wave")
        if note:
            out.append(note)
        out.append(f"highest sustained connect+auth rate: {result['highest_sustained']} /s")
    edges = [e for e in result.get("edges_stats", []) if "error" not in e]
    if edges:
        out.append(table(["edge", "msgs in", "msgs out", "MiB out", "closes by code"],
                         [[e["node_id"], int(e["messages_in"]), int(e["messages_out"]),
                           f"{e['bytes_out'] / 1048576:.1f}", e["closes_by_code"] or "-"] for e in edges]))
    lg = result["loadgen"]
    out.append(f"load generator: {lg['workers']} worker(s), {lg['cpu_s']} CPU s; machine: "
               f"{result['machine']['cpus']} CPUs, load average {result['machine']['loadavg_start']} "
               f"-> {result['machine']['loadavg_end']}")
    if result.get("servers_exited"):
        out.append(f"server processes that exited during the run: {', '.join(result['servers_exited'])}")
    return "\n\n".join(out)
