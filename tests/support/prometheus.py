"""A real Prometheus server (Debian's /usr/bin/prometheus) scraping a cluster, for e2e tests.

It runs as our child on a free loopback port with a temporary config and TSDB directory, scrapes
every second, and is stopped by its pid. Targets are static, each with a `tier` label, as the
Kubernetes PodMonitor relabels them from the pod's component label.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from tests.support import free_port

BINARY = "prometheus"
HOST = "127.0.0.1"


class PrometheusError(RuntimeError):
    """Prometheus could not be started, did not answer, or a query failed."""


class Prometheus:
    """Scrapes `targets`: (tier, host:port) pairs, /metrics on each, every second."""

    def __init__(self, targets: Iterable[tuple[str, str]], workdir: Path, *,
                 start_timeout_s: float = 30.0) -> None:
        self.targets = list(targets)
        self.workdir = workdir
        self.port = 0
        self._start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _config(self) -> dict[str, Any]:
        by_tier: dict[str, list[str]] = {}
        for tier, address in self.targets:
            by_tier.setdefault(tier, []).append(address)
        return {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms",
                       "evaluation_interval": "1s"},
            "scrape_configs": [{
                "job_name": "switchboard",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": addresses, "labels": {"tier": tier}}
                                   for tier, addresses in by_tier.items()],
            }],
        }

    def start(self) -> Prometheus:
        binary = shutil.which(BINARY) or "/usr/bin/prometheus"
        if not Path(binary).exists():
            raise PrometheusError("no prometheus binary (scripts/bootstrap installs it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self._config()))
        self.port = free_port()
        log = open(self.workdir / "prometheus.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self._proc = subprocess.Popen(
                [binary, f"--config.file={config}", f"--web.listen-address={HOST}:{self.port}",
                 f"--storage.tsdb.path={self.workdir / 'data'}", "--storage.tsdb.retention.time=1h",
                 "--web.enable-lifecycle"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + self._start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self._proc.returncode}: "
                                      + (self.workdir / "prometheus.log").read_text()[-2000:])
            if self._get_status("/-/ready") == 200:
                return self
            time.sleep(0.1)
        self.close()
        raise PrometheusError(f"prometheus not ready after {self._start_timeout_s}s")

    def _get_status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(self.url + path, timeout=1.0) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)
        except OSError:
            return 0

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query: the result vector (each item has `metric` and `value`)."""
        qs = urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query?{qs}", timeout=5.0) as r:
                body = json.loads(r.read())
        except (OSError, ValueError) as e:
            raise PrometheusError(f"query {promql!r} failed: {e}") from e
        if body.get("status") != "success":
            raise PrometheusError(f"query {promql!r}: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def values(self, promql: str) -> list[float]:
        return [float(item["value"][1]) for item in self.query(promql)]

    def wait_for(self, promql: str, predicate: Any, timeout_s: float) -> list[dict[str, Any]]:
        """Query until predicate(result) holds; raises with the last result on timeout."""
        deadline = time.monotonic() + timeout_s
        result = self.query(promql)
        while not predicate(result):
            if time.monotonic() > deadline:
                raise AssertionError(f"{promql} never matched within {timeout_s}s; last: {result}")
            time.sleep(0.25)
            result = self.query(promql)
        return result

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
