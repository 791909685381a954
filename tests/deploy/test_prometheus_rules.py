"""Alert rules: promtool accepts and unit-tests them; every alert carries its runbook, which
exists in docs/operations.md; every alert has a firing and a silent test case."""

from __future__ import annotations

import re
import shutil
import subprocess

import yaml
from conftest import ROOT

from tests.support.deploy_exprs import alert_rules

RULES = ROOT / "deploy" / "prometheus" / "switchboard.rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "switchboard.rules.test.yml"
OPERATIONS = ROOT / "docs" / "operations.md"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    assert path, "promtool is not on PATH (Debian package prometheus): the rule checks need it"
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=120, check=False,
                          cwd=RULE_TESTS.parent)


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for line in markdown.splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            found.add(slug)
    return found


def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_severity_a_tier_and_a_runbook_that_exists() -> None:
    sections = anchors(OPERATIONS.read_text())
    alerts = alert_rules()
    assert len(alerts) >= 9
    for rule in alerts:
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        if "tier" in rule["labels"]:
            assert rule["labels"]["tier"] in {"edge", "router", "history"}, name
        else:  # an alert about any tier's processes keeps the series' own tier label
            assert re.search(r"\bby \([^)]*\btier\b", rule["expr"]), f"{name}: no tier label"
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        url = annotations["runbook_url"]
        m = re.fullmatch(r"docs/operations\.md#([\w-]+)", url)
        assert m, url
        assert m.group(1) == name.lower(), "the runbook section is named after the alert"
        assert m.group(1) in sections, f"{OPERATIONS.name} has no section #{m.group(1)}"


def test_the_required_alerts_exist() -> None:
    names = {r["alert"] for r in alert_rules()}
    assert names >= {"SwitchboardPublishFailures", "SwitchboardClientErrorRate", "SwitchboardAbnormalCloseRate",
                     "SwitchboardDeliveryLatencyHigh", "SwitchboardSlowConsumers", "SwitchboardRingChurn",
                     "SwitchboardStoreErrors", "SwitchboardNoRouters", "SwitchboardNoHistory",
                     "SwitchboardEdgeNotReady", "SwitchboardNoEdgeReady"}


def test_every_alert_is_tested_firing_and_silent() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == [RULES.name]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else silent).add(check["alertname"])
            for alert in check["exp_alerts"]:
                assert alert.get("exp_annotations"), "assert the rendered annotations too"
    names = {r["alert"] for r in alert_rules()}
    assert firing == names, names - firing
    assert silent == names, names - silent

