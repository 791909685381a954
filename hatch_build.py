"""Generate the gRPC code from proto/ into services/common/grpc_gen at build time.

The generated modules are never edited by hand and never committed; every install
(`uv sync`, `pip install .`) regenerates them, with .pyi stubs from mypy-protobuf.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


def generate(root: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    proto_dir = root / "proto"
    out = root / "services" / "common" / "grpc_gen"
    out.mkdir(parents=True, exist_ok=True)
    protos = sorted(str(p.relative_to(proto_dir)) for p in proto_dir.rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{proto_dir}",
        f"-I{include}",
        f"--python_out={out}",
        f"--mypy_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    # protoc emits absolute imports ("from history.v1 import ..."); make them package-relative.
    for path in out.rglob("*.py*"):
        text = path.read_text()
        fixed = re.sub(r"^from (history|routing)\.v1 import", r"from services.common.grpc_gen.\1.v1 import",
                       text, flags=re.M)
        fixed = re.sub(r"^import (history|routing)\.v1\.", r"import services.common.grpc_gen.\1.v1.",
                       fixed, flags=re.M)
        if fixed != text:
            path.write_text(fixed)
    for d in [out, *[p for p in out.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch()


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        generate(Path(self.root))
