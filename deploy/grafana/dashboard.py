"""The Switchboard Grafana dashboard, generated from code with grafana-foundation-sdk.

    .venv/bin/python deploy/grafana/dashboard.py          # writes deploy/grafana/switchboard.json

One row per tier (edge, router, history, store and gRPC) with the golden signals of each:
traffic, errors, latency and saturation (CPU, resident memory, queues). Template variables:
`datasource` (a Prometheus data source), `tier` (narrows the instance list) and `instance`
(multi-select, "All"). Every query filters on the scrape labels `tier` and `instance` that the
PodMonitors (k8s/components/monitoring) and the local Prometheus config set. Metric names are
the METRICS-CONTRACT's. tests/deploy/test_dashboard.py checks that the committed JSON is what
this script generates and that every expression parses (promtool).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard, prometheus, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import StackingMode
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    VariableModel,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

OUT = Path(__file__).resolve().parent / "switchboard.json"
UID = "switchboard-overview"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"


def sel(tier: str, extra: str = "") -> str:
    """The label matchers of one tier's series under the dashboard's instance selection."""
    return f'tier="{tier}", instance=~"$instance"' + (f", {extra}" if extra else "")


def rate(metric: str, tier: str, extra: str = "", by: str = "") -> str:
    group = f" by ({by})" if by else ""
    return f"sum{group} (rate({metric}{{{sel(tier, extra)}}}[{RATE}]))"


def quantile(q: float, metric: str, tier: str, extra: str = "", by: str = "") -> str:
    labels = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) (rate({metric}_bucket{{{sel(tier, extra)}}}[{RATE}])))"


def panel(title: str, unit: str, queries: list[tuple[str, str]], description: str = "",
          span: int = 8, height: int = 7, stack: bool = False) -> timeseries.Panel:
    p = (timeseries.Panel().title(title).datasource(DATASOURCE).unit(unit).span(span).height(height)
         .line_width(1).fill_opacity(10 if not stack else 40))
    if description:
        p = p.description(description)
    if stack:
        p = p.stacking(common_builders.StackingConfig().mode(StackingMode.NORMAL))
    for i, (expr, legend) in enumerate(queries):
        p = p.with_target(prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + i)))
    return p


def saturation(tier: str) -> list[timeseries.Panel]:
    return [
        panel(f"{tier}: CPU (cores)", "short",
              [(f'sum by (instance) (rate(process_cpu_seconds_total{{{sel(tier)}}}[{RATE}]))', "{{instance}}")],
              "One Python process per pod uses at most about one core; the HPA targets 60 % of the request."),
        panel(f"{tier}: resident memory", "bytes",
              [(f'sum by (instance) (process_resident_memory_bytes{{{sel(tier)}}})', "{{instance}}")]),
        panel(f"{tier}: event loop lag p99", "s",
              [(quantile(0.99, "event_loop_lag_seconds", tier, by="instance"), "{{instance}}")],
              "How late each process's event loop runs a timer: time waiting for a core, or behind "
              "callbacks that did not yield. Everything on that process is delayed by as much."),
        panel(f"{tier}: waiting for a CPU", "percentunit",
              [(f'sum by (instance) (rate(process_cpu_wait_seconds_total{{{sel(tier)}}}[{RATE}]))',
                "{{instance}}")],
              "Share of the time the process's threads were runnable but waited for a CPU (the "
              "kernel's run delay): other processes on the node had the cores. With the loop lag "
              "above: lag with little wait is the process's own callbacks; lag with wait is the node."),
    ]


def edge_panels() -> list[timeseries.Panel]:
    t = "edge"
    return [
        # traffic
        panel("edge: connections", "short",
              [(f'sum by (instance) (edge_connections_active{{{sel(t)}}})', "{{instance}}"),
               (rate("edge_connections_total", t), "accepted /s")],
              "Open authenticated WebSockets per edge, and new connections per second."),
        panel("edge: frames per second", "ops",
              [(rate("edge_frames_in_total", t), "in"),
               (rate("edge_frames_out_total", t, by="lane"), "out {{lane}}")]),
        panel("edge: publishes per second", "ops",
              [(rate("edge_publishes_total", t, by="source"), "{{source}}")]),
        panel("edge: bytes per second", "Bps",
              [(rate("edge_bytes_in_total", t), "in"), (rate("edge_bytes_out_total", t), "out")]),
        # errors
        panel("edge: failed publishes and client errors", "ops",
              [(rate("edge_publishes_total", t, 'result!~"ok|duplicate"', by="result"), "publish {{result}}"),
               (rate("edge_client_errors_total", t, by="code"), "error event {{code}}")],
              "Publishes not acknowledged (by result) and error events sent to clients (by code)."),
        panel("edge: closes by code", "ops",
              [(rate("edge_closes_total", t, by="code"), "{{code}}")],
              "1000 normal, 1011 internal, 1012 restart, 1013 try later, 4008 slow consumer, 4029 rate limited.",
              stack=True),
        panel("edge: auth failures, rate limiting, recoveries", "ops",
              [(rate("edge_auth_total", t, 'result!="ok"', by="result"), "auth {{result}}"),
               (rate("edge_rate_limited_total", t), "rate limited"),
               (rate("edge_recoveries_total", t, 'outcome!="recovered"', by="outcome"), "recovery {{outcome}}"),
               (rate("edge_gap_repairs_total", t, 'result!~"ok|current"', by="result"), "gap repair {{result}}")]),
        # latency
        panel("edge: delivery latency (publish to client socket)", "s",
              [(quantile(0.5, "edge_delivery_latency_seconds", t), "p50"),
               (quantile(0.99, "edge_delivery_latency_seconds", t), "p99")],
              "Live deliveries only (not replays). Alert: SwitchboardDeliveryLatencyHigh at p99 > 250 ms."),
        panel("edge: publish duration (until acknowledged)", "s",
              [(quantile(0.5, "edge_publish_duration_seconds", t), "p50"),
               (quantile(0.99, "edge_publish_duration_seconds", t), "p99")]),
        # saturation
        panel("edge: send queues", "short",
              [(f'sum by (instance) (edge_send_queue_frames{{{sel(t)}}})', "queued {{instance}}"),
               (f'max by (instance) (edge_send_queue_frames_max{{{sel(t)}}})', "fullest {{instance}}"),
               (rate("edge_send_queue_overflows_total", t), "4008 closes /s")],
              "Frames waiting for slow clients; a connection over SWITCHBOARD_SEND_QUEUE_MAX is closed with 4008."),
        panel("edge: ready and router streams", "short",
              [(f'sum by (instance) (edge_ready{{{sel(t)}}})', "ready {{instance}}"),
               (f'sum by (instance) (edge_routers_connected{{{sel(t)}}})', "routers {{instance}}")]),
        *saturation(t),
    ]


def router_panels() -> list[timeseries.Panel]:
    t = "router"
    return [
        panel("router: publishes per second", "ops",
              [(rate("router_publishes_total", t, by="result"), "{{result}}")]),
        panel("router: events appended to history streams per second", "ops",
              [(rate("history_appends_total", t, by="result"), "{{result}}")],
              "With append_via=store (the default) the owning router appends itself; "
              "with append_via=history the History row shows the appends."),
        panel("router: deliveries and forwards per second", "ops",
              [(rate("router_deliveries_total", t), "deliveries"),
               (rate("router_forwards_total", t, by="result"), "forward {{result}}")]),
        panel("router: channels and links", "short",
              [(f'sum by (instance) (router_channels_owned{{{sel(t)}}})', "channels {{instance}}"),
               (f'max by (instance) (router_edges_connected{{{sel(t)}}})', "edges {{instance}}")]),
        panel("router: errors", "ops",
              [(rate("router_publishes_total", t, 'result!~"ok|duplicate|ephemeral|forwarded"', by="result"),
                "publish {{result}}"),
               (rate("router_forwards_total", t, 'result="failed"'), "forward failed"),
               (rate("router_edge_links_dropped_total", t), "edge link dropped"),
               (rate("router_edge_links_refused_total", t, by="reason"), "edge link refused ({{reason}})")]),
        panel("router: publish duration p99", "s",
              [(quantile(0.99, "router_publish_duration_seconds", t, by="outcome"), "{{outcome}}"),
               (quantile(0.99, "router_history_append_duration_seconds", t), "history append")]),
        panel("router: fan-out (edges per event)", "short",
              [(quantile(0.5, "router_fanout_edges", t), "p50"), (quantile(0.99, "router_fanout_edges", t), "p99")]),
        panel("router: ring", "short",
              [(f'max by (instance) (router_routers_live{{{sel(t)}}})', "live routers seen by {{instance}}"),
               (f'sum(increase(router_ring_changes_total{{{sel(t)}}}[10m]))', "ring changes / 10m"),
               (rate("router_attaches_total", t), "attaches /s"), (rate("router_detaches_total", t), "detaches /s")],
              "Every ring change moves channels. Alert: SwitchboardRingChurn."),
        *saturation(t),
    ]


def history_panels() -> list[timeseries.Panel]:
    t = "history"
    return [
        panel("history: appended events per second", "ops",
              [(rate("history_appends_total", t, by="result"), "{{result}}")]),
        panel("history: reads per second and batch size", "short",
              [(rate("history_read_duration_seconds_count", t), "reads /s"),
               (f'sum(rate(history_append_batch_size_sum{{{sel(t)}}}[{RATE}])) '
                f'/ sum(rate(history_append_batch_size_count{{{sel(t)}}}[{RATE}]))', "events per Append")]),
        panel("history: errors", "ops",
              [(rate("history_appends_total", t, 'result="error"'), "append errors"),
               (rate("history_store_errors_total", t, by="op"), "store {{op}}")]),
        panel("history: read duration", "s",
              [(quantile(0.5, "history_read_duration_seconds", t), "p50"),
               (quantile(0.99, "history_read_duration_seconds", t), "p99")]),
        panel("history: trimmed events per second", "ops",
              [(rate("history_trimmed_events_total", t), "trimmed")]),
        *saturation(t),
    ]


def store_grpc_panels() -> list[timeseries.Panel]:
    streams = 'grpc_method!="Connect"'
    return [
        panel("store: operation duration p99 (history)", "s",
              [(quantile(0.99, "history_store_duration_seconds", "history", by="op"), "{{op}}")],
              "Round trips of history to DragonflyDB. Alert: SwitchboardStoreErrors."),
        panel("store: operations and errors per second", "ops",
              [(rate("history_store_duration_seconds_count", "history", by="op"), "{{op}}"),
               (rate("history_store_errors_total", "history", by="op"), "error {{op}}")]),
        panel("gRPC server: calls per second", "ops",
              [(f'sum by (tier, grpc_method) (rate(grpc_server_handled_total{{instance=~"$instance"}}[{RATE}]))',
                "{{tier}} {{grpc_method}}")]),
        panel("gRPC server: non-OK calls per second", "ops",
              [(f'sum by (tier, grpc_method, grpc_code) (rate(grpc_server_handled_total'
                f'{{instance=~"$instance", grpc_code!="OK"}}[{RATE}]))',
                "{{tier}} {{grpc_method}} {{grpc_code}}")]),
        panel("gRPC server: duration p99 (unary calls)", "s",
              [(f'histogram_quantile(0.99, sum by (le, tier, grpc_method) (rate(grpc_server_handling_seconds_bucket'
                f'{{instance=~"$instance", {streams}}}[{RATE}])))', "{{tier}} {{grpc_method}}")],
              "Connect streams are left out: their handling time is the stream's life."),
        panel("gRPC client: non-OK calls per second", "ops",
              [(f'sum by (tier, grpc_method, grpc_code) (rate(grpc_client_handled_total'
                f'{{instance=~"$instance", grpc_code!="OK"}}[{RATE}]))',
                "{{tier}} -> {{grpc_method}} {{grpc_code}}"),
               (f'histogram_quantile(0.99, sum by (le, tier, grpc_method) (rate(grpc_client_handling_seconds_bucket'
                f'{{instance=~"$instance", {streams}}}[{RATE}])))', "p99 {{tier}} -> {{grpc_method}}")]),
        panel("open file descriptors", "short",
              [('sum by (tier, instance) (process_open_fds{tier=~"edge|router|history", instance=~"$instance"})',
                "{{tier}} {{instance}}")],
              "Each WebSocket is a descriptor on its edge."),
    ]


def variables() -> list[Builder[VariableModel]]:
    everything = VariableOption(selected=True, text="All", value="$__all")
    return [
        dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        dashboard.QueryVariable("tier").label("Tier").datasource(DATASOURCE)
        .query({"query": 'label_values(up{tier=~"edge|router|history"}, tier)', "refId": "tier"})
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True).include_all(True).all_value("edge|router|history").current(everything),
        dashboard.QueryVariable("instance").label("Instance").datasource(DATASOURCE)
        .query({"query": 'label_values(up{tier=~"$tier"}, instance)', "refId": "instance"})
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True).include_all(True).all_value(".*").current(everything),
    ]


def build() -> dashboard.Dashboard:
    board = (dashboard.Dashboard("Switchboard").uid(UID)
             .description("Golden signals per tier: traffic, errors, latency, saturation. "
                          "Runbooks: docs/operations.md.")
             .tags(["switchboard"]).refresh("30s").time("now-3h", "now").timezone("browser")
             .tooltip(DashboardCursorSync.CROSSHAIR).variables(variables()))
    next_id = 1
    for title, panels in (("Edge", edge_panels()), ("Router", router_panels()), ("History", history_panels()),
                          ("Store and gRPC", store_grpc_panels())):
        board = board.with_row(dashboard.Row(title).id(next_id))
        next_id += 1
        for p in panels:
            board = board.with_panel(p.id(next_id))
            next_id += 1
    return board


def render() -> str:
    return json.dumps(build().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main() -> int:
    OUT.write_text(render())
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
