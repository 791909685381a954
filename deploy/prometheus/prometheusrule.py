"""Write k8s/components/monitoring/prometheusrule.yaml from switchboard.rules.yml.

The rules file is the single source (promtool checks and unit-tests it); the Prometheus
Operator takes the same groups wrapped in a PrometheusRule. tests/deploy checks the committed
file equals what this prints. Run from anywhere: `python deploy/prometheus/prometheusrule.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "switchboard.rules.yml"
OUT = ROOT / "k8s" / "components" / "monitoring" / "prometheusrule.yaml"


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render() -> str:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    resource = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "switchboard",
                     "labels": {"app.kubernetes.io/name": "switchboard", "role": "alert-rules"}},
        "spec": {"groups": groups},
    }
    header = ("# GENERATED from deploy/prometheus/switchboard.rules.yml by deploy/prometheus/prometheusrule.py;\n"
              "# edit the rules file and run the script.\n")
    return header + yaml.dump(resource, Dumper=_Dumper, sort_keys=False, width=120)


def main() -> int:
    OUT.write_text(render())
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
