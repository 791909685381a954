"""The Grafana dashboard: generated from deploy/grafana/dashboard.py, committed as JSON, every
query valid PromQL over the contract's metric names, golden signals for every tier."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from conftest import ROOT

from tests.support.deploy_exprs import (
    all_exprs,
    dashboard_exprs,
    metric_names,
    metric_names_used,
    rule_exprs,
    substitute,
)

DASHBOARD_JSON = ROOT / "deploy" / "grafana" / "switchboard.json"

# METRICS-CONTRACT: the names the tiers export (histograms by family name), plus the
# process collector's.
CONTRACT = {
    "edge_connections_active", "edge_connections_total", "edge_closes_total", "edge_auth_total",
    "edge_frames_in_total", "edge_bytes_in_total", "edge_frames_out_total", "edge_bytes_out_total",
    "edge_delivery_latency_seconds", "edge_send_queue_frames", "edge_send_queue_frames_max",
    "edge_send_queue_overflows_total", "edge_recoveries_total", "edge_gap_repairs_total",
    "edge_rate_limited_total", "edge_client_errors_total", "edge_publishes_total",
    "edge_publish_duration_seconds", "edge_routers_connected", "edge_ready",
    "router_channels_owned", "router_routers_live", "router_ring_changes_total", "router_attaches_total",
    "router_detaches_total", "router_fanout_edges", "router_publish_duration_seconds", "router_publishes_total",
    "router_history_append_duration_seconds", "router_forwards_total", "router_deliveries_total",
    "router_edges_connected", "router_edge_links_dropped_total", "router_edge_links_refused_total",
    "history_appends_total", "history_append_batch_size", "history_read_duration_seconds",
    "history_store_duration_seconds", "history_store_errors_total", "history_trimmed_events_total",
    "grpc_server_handled_total", "grpc_server_handling_seconds", "grpc_client_handled_total",
    "grpc_client_handling_seconds",
    "event_loop_lag_seconds", "process_cpu_wait_seconds_total",
    "process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
    "process_virtual_memory_bytes", "process_max_fds", "process_start_time_seconds",
}


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("switchboard_dashboard", ROOT / "deploy" / "grafana" / "dashboard.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD_JSON.read_text())
    return data


def test_the_committed_json_is_what_the_script_generates() -> None:
    assert DASHBOARD_JSON.read_text() == load_generator().render(), "run: .venv/bin/python deploy/grafana/dashboard.py"


def test_every_expression_parses(tmp_path: Path) -> None:
    """Dashboard queries (Grafana variables substituted) and rule expressions as recording rules."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not on PATH (Debian package prometheus)"
    exprs = all_exprs()
    assert len(exprs) == len(dashboard_exprs()) + len(rule_exprs()) >= 50
    for e in exprs:
        assert "$" not in e, f"unsubstituted variable in {e}"
    rules = {"groups": [{"name": "parse", "rules": [{"record": f"switchboard:parse:{i}", "expr": e}
                                                     for i, e in enumerate(exprs)]}]}
    path = tmp_path / "parse.rules.yml"
    path.write_text(yaml.safe_dump(rules, width=1000))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_a_broken_expression_is_caught(tmp_path: Path) -> None:
    """The parse check above can fail: promtool rejects a malformed query."""
    promtool = shutil.which("promtool")
    assert promtool
    path = tmp_path / "bad.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "bad", "rules": [
        {"record": "bad",
         "expr": substitute('sum(rate(edge_frames_in_total{instance=~"$instance"}[$__rate_interval])')}]}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode != 0


def test_only_contract_metrics_are_used() -> None:
    used = metric_names_used()
    assert used - CONTRACT == set(), "not in METRICS-CONTRACT: " + ", ".join(sorted(used - CONTRACT))
    # the golden signals of every tier are there
    for name in ("edge_connections_active", "edge_client_errors_total", "edge_delivery_latency_seconds",
                 "edge_send_queue_frames", "router_publishes_total", "router_publish_duration_seconds",
                 "history_appends_total", "history_store_duration_seconds", "grpc_server_handled_total",
                 "process_cpu_seconds_total", "process_resident_memory_bytes"):
        assert name in used, name


def test_metric_names_are_read_from_promql() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, tier) (rate(edge_delivery_latency_seconds_bucket'
            '{tier="edge", instance=~"$instance"}[$__rate_interval]))) > 0.25 and on (instance) '
            'absent(up{tier="router"} == 1) or sum without (code) (edge_closes_total offset 5m)')
    assert metric_names(expr) == {"edge_delivery_latency_seconds", "edge_closes_total"}


def test_variables_datasource_tier_and_instance(board: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    instance = variables["instance"]
    assert instance["multi"] and instance["includeAll"] and instance["allValue"] == ".*"
    assert "$tier" in instance["query"]["query"], "the instance list follows the tier selection"
    assert variables["tier"]["multi"] and variables["tier"]["includeAll"]


def test_a_row_per_tier_each_with_traffic_errors_latency_and_saturation(board: dict[str, Any]) -> None:
    rows: dict[str, list[dict[str, Any]]] = {}
    current = None
    for p in board["panels"]:
        if p["type"] == "row":
            current = p["title"]
            rows[current] = []
        else:
            assert current is not None, "every panel sits under a row"
            rows[current].append(p)
    assert list(rows) == ["Edge", "Router", "History", "Store and gRPC"]
    for row, tier in (("Edge", "edge"), ("Router", "router"), ("History", "history")):
        exprs = [t["expr"] for p in rows[row] for t in p["targets"]]
        assert all(f'tier="{tier}"' in e for e in exprs), row
        text = " ".join(exprs)
        assert "process_cpu_seconds_total" in text and "process_resident_memory_bytes" in text, row
        assert "event_loop_lag_seconds" in text, f"{row}: saturation of its event loops"
        assert "process_cpu_wait_seconds_total" in text, f"{row}: time its processes waited for a CPU"
        assert "histogram_quantile(0.99" in text, f"{row}: latency"
        titles = " ".join(p["title"] for p in rows[row]).lower()
        assert "error" in titles, f"{row}: errors"
    for p in board["panels"]:
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            for t in p["targets"]:
                assert 'instance=~"$instance"' in t["expr"], t["expr"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
