"""The Tiltfile, evaluated with the `starlark` interpreter and stubbed Tilt built-ins that record
their calls: it must build the one image from deploy/Dockerfile, deploy the dev overlay and name
resources that the overlay really has."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any

import pytest
import starlark
from conftest import ROOT, Manifest, one, render
from starlark import BuiltinFunction, Module, from_value

DEV = ROOT / "k8s" / "overlays" / "dev"


@dataclass
class Tilt:
    """What the Tiltfile asked Tilt to do."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    loads: list[str] = field(default_factory=list)
    rendered: dict[str, list[Manifest]] = field(default_factory=dict)

    def named(self, name: str) -> list[dict[str, Any]]:
        return [kw for n, kw in self.calls if n == name]


def _plain(value: Any) -> Any:
    try:
        return from_value(value)
    except Exception:  # a step object (sync, fall_back_on) or a function: keep as is
        return value


@dataclass(frozen=True)
class Step:
    kind: str
    args: tuple[Any, ...]


def evaluate() -> Tilt:
    tilt = Tilt()

    def recorder(name: str, signature: Any) -> BuiltinFunction:
        def impl(*args: Any, **kwargs: Any) -> Any:
            bound = inspect.signature(signature).bind(*[_plain(a) for a in args],
                                                       **{k: _plain(v) for k, v in kwargs.items()})
            tilt.calls.append((name, dict(bound.arguments)))
            return None
        return BuiltinFunction(name, impl)

    # Signatures of the Tilt API (https://docs.tilt.dev/api.html) for what the Tiltfile may call.
    def version_settings(check_updates: bool = True, constraint: str = "") -> None: ...
    def k8s_yaml(yaml: Any, allow_duplicates: bool = False) -> None: ...
    def k8s_resource(workload: str = "", new_name: str = "", port_forwards: Any = (), extra_pod_selectors: Any = (),
                     trigger_mode: Any = None, resource_deps: Any = (), objects: Any = (), auto_init: bool = True,
                     pod_readiness: str = "", links: Any = (), labels: Any = (),
                     discovery_strategy: str = "") -> None: ...
    def local_resource(name: str, cmd: Any = "", deps: Any = (), resource_deps: Any = (), labels: Any = (),
                       **kwargs: Any) -> None: ...
    # ext://restart_process (tilt-extensions, restart_process/Tiltfile)
    def docker_build_with_restart(ref: str, context: str, entrypoint: Any, live_update: Any,
                                  base_suffix: str = "-tilt_docker_build_with_restart_base",
                                  restart_file: str = "/tmp/.restart-proc", trigger: Any = None,
                                  exit_policy: str = "restart", **kwargs: Any) -> None: ...

    def kustomize(path: str, kustomize_bin: str | None = None, flags: Any = ()) -> str:
        manifests = render(ROOT / path)
        tilt.rendered[path] = manifests
        return f"<kustomize {path}>"

    def sync(local_path: str, remote_path: str) -> Step:
        return Step("sync", (local_path, remote_path))

    def fall_back_on(files: Any) -> Step:
        return Step("fall_back_on", tuple(from_value(files)) if not isinstance(files, str) else (files,))

    def run(cmd: str, trigger: Any = ()) -> Step:
        return Step("run", (cmd,))

    predeclared = {
        "version_settings": recorder("version_settings", version_settings),
        "k8s_yaml": recorder("k8s_yaml", k8s_yaml),
        "k8s_resource": recorder("k8s_resource", k8s_resource),
        "local_resource": recorder("local_resource", local_resource),
        "kustomize": BuiltinFunction("kustomize", kustomize),
        "sync": BuiltinFunction("sync", sync),
        "fall_back_on": BuiltinFunction("fall_back_on", fall_back_on),
        "run": BuiltinFunction("run", run),
    }

    def loader(path: str) -> Module:
        tilt.loads.append(path)
        if path != "ext://restart_process":
            raise AssertionError(f"unexpected load({path!r})")
        module = Module(path)
        module.set("docker_build_with_restart", recorder("docker_build_with_restart", docker_build_with_restart))
        return module

    source = (ROOT / "Tiltfile").read_text()
    starlark.exec_file(source, "Tiltfile", predeclared=predeclared, loader=loader, max_steps=1_000_000)
    return tilt


@pytest.fixture(scope="module")
def tilt() -> Tilt:
    return evaluate()


def test_requires_a_recent_tilt(tilt: Tilt) -> None:
    (settings,) = tilt.named("version_settings")
    assert settings["constraint"] == ">=0.33.0"


def test_builds_the_one_image_from_the_dockerfile_with_a_narrow_context(tilt: Tilt) -> None:
    assert tilt.loads == ["ext://restart_process"]
    (build,) = tilt.named("docker_build_with_restart")
    assert build["context"] == "."
    kwargs = build["kwargs"]
    assert kwargs["dockerfile"] == "deploy/Dockerfile"
    assert (ROOT / kwargs["dockerfile"]).is_file()
    assert set(kwargs["only"]) == {"services/", "clients/python/", "proto/", "hatch_build.py", "pyproject.toml",
                                   "uv.lock", "README.md"}
    for path in kwargs["only"]:
        assert (ROOT / path).exists(), path
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(rf"^FROM \S+ AS {kwargs['target']}$", dockerfile, re.M), "the target is a Dockerfile stage"
    assert build["entrypoint"] == ["switchboard"]


def test_live_update_syncs_the_sources_to_where_the_image_imports_them(tilt: Tilt) -> None:
    (build,) = tilt.named("docker_build_with_restart")
    steps = build["live_update"]
    syncs = [s.args for s in steps if s.kind == "sync"]
    assert syncs == [("services/", "/app/services/")]
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "WORKDIR /app" in dockerfile and "/app/services" in dockerfile
    # the editable install puts /app on sys.path: edited modules are what the restarted process imports
    fall_back = {f for s in steps if s.kind == "fall_back_on" for f in s.args}
    assert {"proto/", "pyproject.toml", "uv.lock", "hatch_build.py"} <= fall_back
    # the pods mount an emptyDir on /tmp, which would hide a restart file baked into the image there
    assert not build["restart_file"].startswith("/tmp/")
    assert build["restart_file"].startswith("/app/")


def test_deploys_the_dev_overlay_and_names_its_workloads(tilt: Tilt) -> None:
    (deploy,) = tilt.named("k8s_yaml")
    assert deploy["yaml"] == "<kustomize k8s/overlays/dev>"
    manifests = tilt.rendered["k8s/overlays/dev"]
    workloads = {m["metadata"]["name"]: m for m in manifests if m["kind"] in ("Deployment", "StatefulSet")}
    resources = {r["workload"]: r for r in tilt.named("k8s_resource")}
    assert set(resources) == set(workloads)
    for name, r in resources.items():
        assert r["labels"], name
        assert set(r["labels"]) <= {"edge", "backend", "infra"}
        assert set(r.get("resource_deps", ())) <= set(resources), name
    assert resources["dragonfly"]["labels"] == ["infra"]
    for tier in ("edge", "router", "history"):
        assert "dragonfly" in resources[tier]["resource_deps"]
    # the image Tilt builds is the one every tier runs
    (build,) = tilt.named("docker_build_with_restart")
    for tier in ("edge", "router", "history"):
        (c,) = one(manifests, "Deployment", tier)["spec"]["template"]["spec"]["containers"]
        assert c["image"] == build["ref"]
        assert "command" not in c, "Tilt sets the command (the restart wrapper); args choose the tier"
        assert c["args"] == [tier]


def test_port_forwards_reach_the_edge_and_the_metrics_ports(tilt: Tilt) -> None:
    manifests = render(DEV)
    resources = {r["workload"]: r for r in tilt.named("k8s_resource")}

    def container_ports(kind: str, name: str) -> set[int]:
        (c,) = one(manifests, kind, name)["spec"]["template"]["spec"]["containers"]
        return {p["containerPort"] for p in c["ports"]}

    forwards = {name: [tuple(int(x) for x in f.split(":")) for f in r.get("port_forwards", ())]
                for name, r in resources.items()}
    assert (18000, 8000) in forwards["edge"]
    for name, pairs in forwards.items():
        kind = "StatefulSet" if name == "dragonfly" else "Deployment"
        for _, remote in pairs:
            assert remote in container_ports(kind, name), (name, remote)
    assert any(remote == 9100 for _, remote in forwards["router"])
    assert any(remote == 9100 for _, remote in forwards["history"])
    locals_ = [local for pairs in forwards.values() for local, _ in pairs]
    assert len(locals_) == len(set(locals_)), "two forwards on one local port"
