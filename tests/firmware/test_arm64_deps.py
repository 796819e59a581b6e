"""The runtime dependencies install on a 64-bit Raspberry Pi: aarch64 wheels exist for all.

``pip download --platform`` resolves [project.dependencies] of pyproject.toml for
CPython 3.11 on the aarch64 manylinux tags (Debian bookworm and Raspberry Pi OS have
glibc 2.36) with binary wheels only, as the image build and the arm64 check install
them: nothing may need a compiler on the device. It needs PyPI, which CI reaches; when
it cannot run, the test fails and says why. firmware_images/arm64/check.sh goes further
and installs and runs them under emulation.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLATFORMS = ["manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_28_aarch64"]
GLIBC_BOOKWORM = (2, 36)
NATIVE = {
    "numpy",
    "onnxruntime",
    "ai-edge-litert",
    "opencv-python-headless",
    "pydantic-core",
    "orjson",
    "uvloop",
}
# what models/scripts use to train and convert the models: never on the device
MODEL_BUILDING = {
    "torch", "tensorflow", "tensorflow-cpu", "keras", "scikit-learn", "scipy", "onnx", "onnxscript",
    "skl2onnx", "tf2onnx", "jax", "mediapipe",
}  # fmt: skip
BUILD_TOOLS = {
    "setuptools",
    "wheel",
    "cython",
    "cmake",
    "ninja",
    "pybind11",
    "meson",
    "meson-python",
    "scikit-build",
}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_requirements() -> list[str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def requirement_name(req: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", req)
    assert match, req
    return canonical(match.group(0))


def wheel_tags(filename: str) -> tuple[str, str, list[str]]:
    """'numpy-2.4.6-cp311-cp311-manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl' -> (name, py, platforms)."""
    parts = filename[: -len(".whl")].split("-")
    return canonical(parts[0]), parts[-3], parts[-1].split(".")


def platform_ok(tag: str) -> bool:
    if tag == "any":
        return True
    if tag == "manylinux2014_aarch64":
        return True
    m = re.fullmatch(r"manylinux_(\d+)_(\d+)_aarch64", tag)
    return bool(m) and (int(m.group(1)), int(m.group(2))) <= GLIBC_BOOKWORM


@pytest.fixture(scope="module")
def aarch64_wheels(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    dest = tmp_path_factory.mktemp("aarch64-wheels")
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    cmd = [
        sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--progress-bar", "off",
        "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", *platforms,
        "--dest", str(dest), *runtime_requirements(),
    ]  # fmt: skip
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        pytest.fail("pip download of the aarch64 wheels took over 15 minutes: is PyPI reachable?")
    if out.returncode != 0:
        errors = [line for line in out.stderr.splitlines() if "WARNING: Location" not in line]
        pytest.fail(
            "pip could not get aarch64 wheels of every runtime dependency (a dependency without an "
            "aarch64 wheel for CPython 3.11, or no network to PyPI):\n" + "\n".join(errors[-25:])
        )
    return sorted(p.name for p in dest.iterdir())


def test_every_runtime_dependency_resolves_to_aarch64_wheels(aarch64_wheels: list[str]) -> None:
    assert aarch64_wheels, "nothing downloaded"
    not_wheels = [f for f in aarch64_wheels if not f.endswith(".whl")]
    assert not_wheels == [], f"source distributions would need a compiler on the device: {not_wheels}"
    for filename in aarch64_wheels:
        _, _, platforms = wheel_tags(filename)
        assert any(platform_ok(tag) for tag in platforms), f"{filename} does not install on aarch64 bookworm"
    names = {wheel_tags(f)[0] for f in aarch64_wheels}
    missing = {requirement_name(r) for r in runtime_requirements()} - names
    assert missing == set(), f"no wheel for {missing}"


def test_native_runtime_libraries_are_aarch64_builds(aarch64_wheels: list[str]) -> None:
    by_name = {wheel_tags(f)[0]: f for f in aarch64_wheels}
    for name in NATIVE:
        assert name in by_name, f"{name} is not in the runtime closure"
        _, python, platforms = wheel_tags(by_name[name])
        assert all(tag.endswith("aarch64") for tag in platforms), by_name[name]
        assert python.startswith("cp3"), by_name[name]


def test_runtime_closure_has_no_build_or_model_building_packages(aarch64_wheels: list[str]) -> None:
    """What the image's venv holds: no build tools, none of the stack that built the models."""
    named_by_model_scripts: set[str] = set()
    for path in (ROOT / "models" / "scripts").glob("requirements-*.txt"):
        for raw in path.read_text().splitlines():
            line = raw.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                named_by_model_scripts.add(requirement_name(line))
    present = MODEL_BUILDING & named_by_model_scripts
    assert len(present) >= 4, f"models/scripts/requirements-*.txt no longer name the build stack: {present}"
    closure = {wheel_tags(f)[0] for f in aarch64_wheels}
    assert closure & MODEL_BUILDING == set(), "model-building packages in the device's runtime"
    assert closure & BUILD_TOOLS == set(), "build tools in the device's runtime"


def test_the_agent_itself_is_a_pure_python_wheel(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a copy: setuptools writes build/ and *.egg-info next to the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("edge_agent", "cloud_sync"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-deps",
         "--wheel-dir", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    wheels = [p.name for p in (tmp_path / "dist").glob("edge_agent-*.whl")]
    assert len(wheels) == 1 and wheels[0].endswith("-py3-none-any.whl"), wheels
