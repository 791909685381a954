"""The TypeScript client's suites (clients/typescript), run by the project's single pytest run.

`npm run test` runs its unit tests (a real `ws` server as the peer) and its integration tests (a
real cluster started by clients/typescript/test/support/cluster.py); `npm run test:browser` runs
the demo page in headless Chromium against a cluster with SWITCHBOARD_DEMO=true.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "clients" / "typescript"


def _run(argv: list[str], timeout_s: float) -> None:
    env = {**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "0", "CI": os.environ.get("CI", "true")}
    try:
        proc = subprocess.run(argv, cwd=PACKAGE, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"{' '.join(argv)} did not finish within {timeout_s:.0f} s:\n{out[-8000:]}")
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited with {proc.returncode}:\n{(proc.stdout + proc.stderr)[-8000:]}")


@pytest.fixture(scope="module")
def built(tu: float) -> None:
    """node_modules installed from the lock file and dist/ built (library and demo page)."""
    if shutil.which("npm") is None:
        pytest.fail("npm is not installed: run scripts/bootstrap")
    _run(["bash", "scripts/ensure-built.sh"], 600 * tu)


@pytest.mark.timeout(900)
def test_client_unit_and_integration(built: None, tu: float) -> None:
    _run(["npm", "run", "test"], 600 * tu)


@pytest.mark.timeout(900)
def test_demo_page_in_chromium(built: None, tu: float) -> None:
    _run(["npm", "run", "test:browser"], 600 * tu)
