"""deploy/Dockerfile and .dockerignore: one multi-stage image, slim and non-root at run time, its
ports and Python version in line with the settings and the lock file. (Docker does not run here.)"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field

import pytest
from conftest import ROOT

from services.common.settings import Settings

DOCKERFILE = ROOT / "deploy" / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [arg for o, arg in self.instructions if o == op]


def parse() -> tuple[dict[str, str], list[Stage]]:
    """ARGs before the first FROM, and the stages (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op, rest = op.upper(), rest.strip()
        if op == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            assert m, line
            base = re.sub(r"\$\{(\w+)\}", lambda v: args.get(v.group(1), v.group(0)), m.group(1))
            stages.append(Stage(base, m.group(2) or str(len(stages))))
        elif not stages and op == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            stages[-1].instructions.append((op, rest))
    return args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse()[1]


def test_multi_stage_with_a_slim_python_runtime_last(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    builder, final = stages[0], stages[-1]
    assert final.name == "runtime", "the default target (the last stage) is the production image"
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", final.base), final.base
    assert builder.base == final.base, "build and run on the same Python (the venv links to its binary)"


def test_the_python_version_has_wheels_for_every_compiled_dependency(stages: list[Stage]) -> None:
    minor = re.fullmatch(r"python:3\.(\d+)-.*", stages[-1].base)
    assert minor
    tag = f"cp3{minor.group(1)}"
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    compiled = {"grpcio", "hiredis", "orjson", "pydantic-core", "uvloop", "httptools", "websockets", "pyyaml"}
    missing = []
    for package in lock["package"]:
        if package["name"] not in compiled:
            continue
        wheels = [w["url"].rsplit("/", 1)[1] for w in package.get("wheels", [])]
        linux = [w for w in wheels if "manylinux" in w and "x86_64" in w]
        if not any(f"-{tag}-{tag}-" in w or "-abi3-" in w for w in linux):
            missing.append(package["name"])
    assert not missing, f"no {tag} manylinux x86_64 wheel for {missing}"
    assert f"CPython 3.{minor.group(1)}" in DOCKERFILE.read_text(), "say which Python and why in a comment"


def test_the_build_stage_installs_the_locked_dependencies_with_uv(stages: list[Stage]) -> None:
    builder = stages[0]
    runs = " ".join(builder.all("RUN"))
    assert "pip install uv==0.13.8" in runs
    assert "uv sync --frozen --no-dev" in runs
    env = " ".join(builder.all("ENV"))
    assert "UV_PYTHON_DOWNLOADS=never" in env
    copied = " ".join(builder.all("COPY"))
    for needed in ("pyproject.toml", "uv.lock", "hatch_build.py", "proto/", "services/", "clients/python/"):
        assert needed in copied, needed


BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|cc|clang|build-essential|make|uv|pip|apt-get|apk|wheel)\b")


@pytest.mark.parametrize("stage_name", ["runtime", "dev"])
def test_runtime_stages_carry_no_build_tools_and_run_as_a_numeric_non_root_user(
        stages: list[Stage], stage_name: str) -> None:
    (stage,) = [s for s in stages if s.name == stage_name]
    for op, arg in stage.instructions:
        if op == "RUN":
            assert not BUILD_TOOLS.search(arg), f"{stage_name}: RUN {arg}"
        if op == "COPY":
            sources = [a for a in arg.split() if not a.startswith("--")][:-1]
            assert "--from=builder" in arg, f"{stage_name} copies only from the build stage: {arg}"
            assert all(s.startswith("/app/") for s in sources), arg
            assert not any(re.search(r"(uv|pip|\.cache|wheels?)(/|$)", s) for s in sources), arg
    (user,) = stage.all("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, user
    assert stage.all("ENTRYPOINT") == ['["switchboard"]']


def test_the_runtime_writes_nothing_outside_tmp(stages: list[Stage]) -> None:
    env = " ".join(stages[-1].all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "UV_COMPILE_BYTECODE=1" in " ".join(stages[0].all("ENV")), "bytecode is compiled at build time"
    assert not stages[-1].all("VOLUME")


def test_exposed_ports_and_defaults_match_the_settings(stages: list[Stage]) -> None:
    final = stages[-1]
    exposed = {int(p) for arg in final.all("EXPOSE") for p in arg.split()}
    env = dict(kv.split("=", 1) for arg in final.all("ENV") for kv in arg.split() if "=" in kv)
    assert int(env["SWITCHBOARD_PORT"]) == Settings.model_fields["port"].default
    assert exposed == {int(env["SWITCHBOARD_PORT"]), int(env["SWITCHBOARD_LINK_PORT"]),
                       int(env["SWITCHBOARD_METRICS_PORT"])}
    assert env["SWITCHBOARD_HOST"] == "0.0.0.0"
    fields = {f"SWITCHBOARD_{n.upper()}" for n in Settings.model_fields}
    assert {k for k in env if k.startswith("SWITCHBOARD_")} <= fields


def test_healthcheck_runs_the_healthcheck_module(stages: list[Stage]) -> None:
    (check,) = stages[-1].all("HEALTHCHECK")
    assert check.endswith('CMD ["python", "-m", "services.healthcheck"]'), check
    assert (ROOT / "services" / "healthcheck.py").is_file()


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "**", "deny everything, then allow what the build copies"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "uv.lock", "README.md", "hatch_build.py", "proto", "services",
                       "clients/python"}
    for excluded in ("**/.venv/", "**/node_modules/", "**/.git/", "tests/", "services/common/grpc_gen/"):
        assert excluded in lines, excluded
