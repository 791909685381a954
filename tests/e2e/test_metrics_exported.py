"""Every metric that the Grafana dashboard or a Prometheus alert reads is exported by a running
tier: the dashboards and alerts cannot drift from the code."""

from __future__ import annotations

import urllib.request

from services.devcluster import DevCluster
from tests.support.deploy_exprs import metric_names_used


def _families(url: str) -> set[str]:
    with urllib.request.urlopen(url, timeout=5.0) as r:
        text = r.read().decode()
    # "# TYPE name kind": one line per family, present even before a labelled series has a child.
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def _exported_by_role(cluster: DevCluster) -> dict[str, set[str]]:
    exported: dict[str, set[str]] = {}
    for proc in cluster.procs:
        assert proc.metrics_url, f"{proc.name} serves no /metrics"
        exported.setdefault(proc.role, set()).update(_families(proc.metrics_url))
    return exported


def test_every_metric_of_the_dashboard_and_alerts_is_exported(cluster: DevCluster) -> None:
    exported = _exported_by_role(cluster)
    everywhere = set().union(*exported.values())
    used = metric_names_used()
    assert len(used) > 30, "the dashboard and rules read almost nothing: wrong files?"
    missing = sorted(used - everywhere - {"up"})
    assert not missing, f"used by dashboards/alerts but exported by no tier: {missing}"
    for role in ("edge", "router", "history"):
        own = {name for name in used if name.startswith(f"{role}_")}
        assert own <= exported[role], f"{role} lacks {sorted(own - exported[role])}"
        assert {"process_cpu_seconds_total", "process_resident_memory_bytes",
                "event_loop_lag_seconds", "process_cpu_wait_seconds_total"} <= exported[role]
