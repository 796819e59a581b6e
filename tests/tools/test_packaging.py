"""The model tools stay off the device: `onnx` is in the optional `tools` extra, never a runtime
dependency, and the device images install the runtime dependencies only."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

from tests.conftest import ROOT


def _name(req: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", req)
    assert match, req
    return match.group(0).lower()


def test_onnx_is_an_optional_tool_not_a_runtime_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "onnx" not in {_name(r) for r in project["dependencies"]}
    assert "onnx" in {_name(r) for r in project["optional-dependencies"]["tools"]}
    assert "onnx" in {_name(r) for r in project["optional-dependencies"]["dev"]}  # the tests need it


def test_device_images_install_the_runtime_dependencies_only() -> None:
    for dockerfile in ("Dockerfile", "Dockerfile.template"):
        text = (ROOT / "firmware_images" / dockerfile).read_text()
        assert '["project"]["dependencies"]' in text, dockerfile
        assert "[tools]" not in text and "optional-dependencies" not in text, dockerfile


def test_serving_never_imports_the_tools() -> None:
    code = (
        "import sys\n"
        "from edge_agent.cli import build_parser\n"
        "import edge_agent.serving.app, edge_agent.sync.agent, edge_agent.runtime.bench\n"
        "build_parser()\n"
        "print(sorted(m for m in sys.modules if m == 'onnx' or m.startswith(('onnx.', 'edge_agent.tools'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
