"""Every PromQL expression of the Grafana dashboard and the Prometheus rules, and the metric
families they read.

The deployment tests parse them all with promtool; a cross-check against a running cluster's
scrape can compare `metric_names_used()` with what the tiers export.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "switchboard.json"
RULES = ROOT / "deploy" / "prometheus" / "switchboard.rules.yml"

# What Grafana puts in place of its variables when it runs a query (for parsing and for running
# the expressions against a Prometheus outside Grafana).
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$instance": ".*",
    "$tier": "edge|router|history",
    "${datasource}": "prometheus",
    "$datasource": "prometheus",
}

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or",
             "unless", "inf", "nan"}
_SUFFIXES = ("_bucket", "_sum", "_count")


def substitute(expr: str) -> str:
    """The expression with Grafana's variables replaced by concrete values."""
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    return expr


def _exprs_in(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from _exprs_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from _exprs_in(item)


def dashboard_exprs(path: Path = DASHBOARD) -> list[str]:
    """Every panel query of the dashboard, as written (with Grafana variables)."""
    return list(_exprs_in(json.loads(path.read_text())))


def rule_exprs(path: Path = RULES) -> list[str]:
    """Every alerting and recording rule expression."""
    groups = yaml.safe_load(path.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def alert_rules(path: Path = RULES) -> list[dict[str, Any]]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def all_exprs() -> list[str]:
    """Dashboard and rule expressions, Grafana variables substituted: valid PromQL."""
    return [substitute(e) for e in dashboard_exprs()] + [substitute(e) for e in rule_exprs()]


def metric_names(expr: str) -> set[str]:
    """Metric families an expression reads (histogram suffixes stripped, `up` left out)."""
    text = substitute(expr)
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)             # string literals
    text = re.sub(r"\{[^}]*\}", "{}", text)                      # label matchers
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    text = re.sub(r"\[[^\]]*\]", "[]", text)                     # ranges
    names = set()
    for m in re.finditer(r"(?<![\w:.])([a-zA-Z_:][\w:]*)", text):
        name = m.group(1)
        rest = text[m.end():].lstrip()
        if name.lower() in _KEYWORDS or rest.startswith("("):  # keyword or function call
            continue
        for suffix in _SUFFIXES:
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        names.add(name)
    names.discard("up")
    return names


def metric_names_used() -> set[str]:
    """Names of the metric families the dashboard and the alert rules reference."""
    return set().union(*(metric_names(e) for e in dashboard_exprs() + rule_exprs()))
