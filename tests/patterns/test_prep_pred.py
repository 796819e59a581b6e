"""Prep-pred end to end: real prep and model@NAME role processes started here, a
real gateway chaining them over loopback HTTP, tensors in the binary
``tensorwire`` format. Answers must equal the in-process engine's; each side
can be replaced while the other keeps running. Also: the tensorwire format."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edge_agent.runtime.engine import Engine
from edge_agent.runtime.package import read_manifest, write_manifest
from edge_agent.runtime.preprocess import preprocess
from edge_agent.runtime.store import ModelStore
from edge_agent.services import tensorwire
from edge_agent.services.client import HttpClient, ServiceTimeout, ServiceUnavailable
from tests.conftest import MODELS, ROOT, copy_models
from tests.serving.gateway_proc import Gateway, free_port, run_gateway

ASTRONAUT = (MODELS / "face" / "1" / "samples" / "astronaut.png").read_bytes()
DIGITS = [(MODELS / "digits" / "1" / "samples" / f"digit_{d}.png").read_bytes() for d in (0, 2, 4)]
# Starts the prep role with another PREP_VERSION: what a new release of the prep service reports.
PREP_RELEASE = (
    "import sys, edge_agent.services.prep as p; p.PREP_VERSION = sys.argv.pop(1); "
    "from edge_agent.cli import main; sys.exit(main(sys.argv[1:]))"
)


# -- role processes (shared with test_microservice.py) ---------------------------------------
@dataclass
class RoleProc:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def health(self) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/health", timeout=5)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a SIGSTOPped process cannot handle SIGTERM
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Roles:
    """Starts role processes (``edge-agent <role> ...``) and stops every one of them at the end."""

    model_dir: Path
    data_dir: Path
    started: list[RoleProc] = field(default_factory=list)

    def start(
        self,
        *role: str,
        port: int | None = None,
        prep_version: str | None = None,
        env: dict[str, str] | None = None,
    ) -> RoleProc:
        port = port or free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / f"{'-'.join(role)}-{port}-{len(self.started)}.log"
        common = [
            "--model-dir",
            str(self.model_dir),
            "--data-dir",
            str(self.data_dir),
            *role,
            "--port",
            str(port),
        ]
        if prep_version is None:
            cmd = [sys.executable, "-m", "edge_agent.cli", *common]
        else:
            cmd = [sys.executable, "-c", PREP_RELEASE, prep_version, *common]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")} | (env or {})
        with log.open("wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT)
        rp = RoleProc(role[-1], port, proc, log)
        self.started.append(rp)
        return rp

    def wait(self, *procs: RoleProc, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for rp in procs:
            while True:
                if rp.proc.poll() is not None:
                    raise RuntimeError(f"{rp.name} exited with {rp.proc.returncode}:\n{rp.logs()}")
                try:
                    if httpx.get(f"{rp.url}/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{rp.name} not ready in {timeout} s:\n{rp.logs()}")
                time.sleep(0.05)

    def close(self) -> None:
        for rp in self.started:
            rp.stop()


@pytest.fixture(scope="module")
def roles_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prep_pred")


@dataclass
class Stack:
    roles: Roles
    gw: Gateway
    prep: RoleProc
    face: RoleProc
    digits: RoleProc
    engine: Engine
    store: ModelStore  # the store the roles share (its state file decides the active version)


@pytest.fixture(scope="module")
def stack(roles_dir: Path) -> Iterator[Stack]:
    models = copy_models(roles_dir / "models", ["face", "digits"])
    data = roles_dir / "data"
    roles = Roles(models, data)
    try:
        prep, face, digits = roles.start("prep"), roles.start("model", "face"), roles.start("model", "digits")
        roles.wait(prep, face, digits)
        env = {
            "EDGE_PRELOAD": "false",
            "EDGE_SERVICES__PREP_URL": prep.url,
            "EDGE_SERVICES__MODELS": json.dumps({"face": face.url, "digits": digits.url}),
        }
        engine = Engine(ModelStore(models, roles_dir / "reference-state.json"))
        with run_gateway(models, data, env=env) as gw:
            yield Stack(roles, gw, prep, face, digits, engine, ModelStore(models, data / "store-state.json"))
        engine.close()
    finally:
        roles.close()


def prep_pred(stack: Stack, name: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{stack.gw.url}/prep-pred/{name}", timeout=30, **kwargs)


# -- end to end -------------------------------------------------------------------------------
def test_face_end_to_end_equals_in_process_predict(stack: Stack) -> None:
    r = prep_pred(stack, "face", content=ASTRONAUT, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["results"] == stack.engine.predict("face", images=[ASTRONAUT]).results
    (box,) = body["results"][0]["boxes"]
    assert box["score"] > 0.9
    for key, want in (("xmin", 179), ("xmax", 271), ("ymin", 82), ("ymax", 175)):
        assert abs(box[key] - want) < 4, (key, box)
    assert (body["model"], body["version"]) == ("face", "1")
    assert body["model_service"] == {"version": "1", "backend": "litert", "url": stack.face.url}
    assert body["prep"]["version"] == stack.prep.health()["version"]
    assert body["prep"]["spec_version"] == "1"
    assert set(body["timings_ms"]) == {
        "prep",
        "prep_service",
        "infer",
        "infer_service",
        "postprocess",
        "total",
    }
    assert body["timings_ms"]["total"] >= body["timings_ms"]["prep"] + body["timings_ms"]["infer"]


def test_digits_end_to_end_equals_in_process_predict(stack: Stack) -> None:
    want = stack.engine.predict("digits", images=DIGITS).results
    assert [w["label"] for w in want] == ["0", "2", "4"]
    one = prep_pred(stack, "digits", files={"file": ("d.png", DIGITS[2], "image/png")})
    assert one.status_code == 200, one.text
    assert one.json()["results"] == want[2:]
    images = [base64.b64encode(d).decode() for d in DIGITS]
    many = prep_pred(stack, "digits", json={"images": images})
    assert many.status_code == 200, many.text
    assert many.json()["results"] == want


def test_tensors_travel_in_binary_and_match_the_runtime(stack: Stack) -> None:
    spec = stack.engine.store.manifest("face").preprocessing
    assert spec is not None
    r = httpx.post(f"{stack.prep.url}/prep/face", content=ASTRONAUT, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == tensorwire.MEDIA_TYPE
    msg = tensorwire.decode(r.content)
    tensor, geo = preprocess(ASTRONAUT, spec)
    np.testing.assert_array_equal(msg.tensors["input"], tensor[None])
    assert msg.meta["geometry"] == [{k: getattr(geo, k) for k in msg.meta["geometry"][0]}]
    assert len(r.content) < tensor.nbytes + 1024  # raw float32 bytes, not JSON text

    r = httpx.post(
        f"{stack.face.url}/infer",
        content=tensorwire.encode(msg.tensors),
        headers={"content-type": tensorwire.MEDIA_TYPE},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    out = tensorwire.decode(r.content)
    model = stack.engine.model("face")
    for name, arr in stack.engine.infer(model, {"input": tensor[None]}).items():
        np.testing.assert_array_equal(out.tensors[name], arr)
    assert out.meta["version"] == "1"


def test_model_service_takes_only_valid_tensor_messages(stack: Stack) -> None:
    url = f"{stack.digits.url}/infer"
    r = httpx.post(url, json={"inputs": {"input": [[0.0] * 64]}}, timeout=10)
    assert (r.status_code, r.json()["code"]) == (415, "unsupported_media_type")
    bad = tensorwire.encode({"input": np.zeros((1, 3), np.float32)})
    r = httpx.post(url, content=bad, headers={"content-type": tensorwire.MEDIA_TYPE}, timeout=10)
    assert (r.status_code, r.json()["code"]) == (422, "invalid_input")
    r = httpx.post(url, content=b"ETW1junk", headers={"content-type": tensorwire.MEDIA_TYPE}, timeout=10)
    assert (r.status_code, r.json()["code"]) == (422, "invalid_tensor_message")
    r = httpx.get(f"{stack.digits.url}/metadata", timeout=10)
    assert r.json()["manifest"]["name"] == "digits"


def test_bad_image_is_a_clear_4xx_from_prep(stack: Stack) -> None:
    r = prep_pred(stack, "face", content=b"not an image", headers={"content-type": "image/jpeg"})
    assert r.status_code == 422
    body = r.json()
    assert body["code"] == "invalid_image"
    assert body["error"].startswith("prep rejected the request: not an image")
    truncated = ASTRONAUT[: len(ASTRONAUT) // 2]
    r = prep_pred(stack, "face", content=truncated, headers={"content-type": "image/png"})
    assert (r.status_code, r.json()["code"]) == (422, "invalid_image")
    assert "truncated" in r.json()["error"]
    r = prep_pred(stack, "digits", json={"data": [[0.0] * 64]})
    assert r.status_code == 422 and "takes images" in r.json()["error"]
    r = prep_pred(stack, "iris", content=ASTRONAUT, headers={"content-type": "image/png"})
    assert (r.status_code, r.json()["code"]) == (404, "service_not_configured")


def test_roles_stay_memory_light(stack: Stack) -> None:
    """prep never maps an inference runtime; a model role maps only its own backend, never OpenCV."""

    def mapped(rp: RoleProc) -> str:
        return Path(f"/proc/{rp.pid}/maps").read_text()

    if not Path(f"/proc/{stack.prep.pid}/maps").exists():
        pytest.skip("needs /proc")
    prep, face, digits = mapped(stack.prep), mapped(stack.face), mapped(stack.digits)
    assert "cv2" in prep and "onnxruntime" not in prep and "litert" not in prep
    assert "cv2" not in face and "onnxruntime" not in face
    assert "cv2" not in digits and "litert" not in digits and "onnxruntime" in digits


# -- each side upgraded without the other ---------------------------------------------------
def test_prep_replaced_while_model_service_keeps_running(stack: Stack) -> None:
    face_before = stack.face.health()
    stack.prep.stop()
    r = prep_pred(stack, "face", content=ASTRONAUT, headers={"content-type": "image/png"})
    assert r.status_code == 503
    assert r.json()["error"].startswith(f"prep at {stack.prep.url} is down")

    stack.prep = stack.roles.start("prep", port=stack.prep.port, prep_version="0.1.0+prep.2")
    stack.roles.wait(stack.prep)
    r = prep_pred(stack, "face", content=ASTRONAUT, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    assert r.json()["prep"]["version"] == "0.1.0+prep.2"
    assert r.json()["results"] == stack.engine.predict("face", images=[ASTRONAUT]).results
    assert stack.face.health() == face_before  # same process, same version


def test_model_service_upgraded_while_prep_keeps_running(stack: Stack) -> None:
    prep_before = stack.prep.health()
    r = prep_pred(stack, "digits", content=DIGITS[0], headers={"content-type": "image/png"})
    assert (r.status_code, r.json()["version"]) == (200, "1")  # the gateway now knows version 1
    v1 = stack.store.package_dir("digits", "1")
    v2 = v1.parent / "2"
    shutil.copytree(v1, v2)
    write_manifest(v2, read_manifest(v1).model_copy(update={"version": "2"}))
    stack.store.set_active("digits", "2")

    stack.digits.stop()
    r = prep_pred(stack, "digits", content=DIGITS[0], headers={"content-type": "image/png"})
    assert r.status_code == 503
    assert "model@digits" in r.json()["error"] and "is down" in r.json()["error"]

    # the gateway still holds version 1's manifest: model@digits refuses (409), the gateway refreshes
    stack.digits = stack.roles.start("model", "digits", port=stack.digits.port)
    stack.roles.wait(stack.digits)
    r = prep_pred(stack, "digits", content=DIGITS[0], headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["version"], body["model_service"]["version"]) == ("2", "2")
    assert body["results"] == stack.engine.predict("digits", images=[DIGITS[0]], version="2").results
    assert body["prep"]["version"] == prep_before["version"]
    assert stack.prep.health() == prep_before  # same process, same version
    assert "model@digits rejected the request: model@digits serves version 2, not 1" in stack.gw.logs()


# -- the wire format ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", sorted(tensorwire.DTYPES))
def test_tensorwire_round_trip(dtype: str) -> None:
    rng = np.random.default_rng(0)
    tensors = {
        "a": (rng.random((2, 3, 5)) * 100).astype(dtype),
        "empty": np.zeros((0, 4), dtype=dtype),
        "scalar": np.array(7, dtype=dtype),
        "strided": (rng.random((4, 6)) * 10).astype(dtype)[:, ::2],
    }
    meta = {"geometry": [{"scale_x": 0.25}], "version": "1"}
    msg = tensorwire.decode(tensorwire.encode(tensors, meta))
    assert msg.meta == meta
    assert list(msg.tensors) == list(tensors)
    for name, arr in tensors.items():
        got = msg.tensors[name]
        assert got.dtype == arr.dtype and got.shape == arr.shape
        np.testing.assert_array_equal(got, arr)
        assert got.ctypes.data % 8 == 0 or got.size == 0


def _message(header: dict[str, Any], data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return b"ETW1" + len(text).to_bytes(4, "little") + text + b"\0" * (-(8 + len(text)) % 8) + data


def _entry(**kw: Any) -> dict[str, Any]:
    return {"name": "x", "dtype": "float32", "shape": [2], "offset": 0, "nbytes": 8} | kw


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "shorter than"),
        (b"NOPE\0\0\0\0", "not a tensor message"),
        (b"ETW1\xff\xff\xff\x7f{}", "out of bounds"),
        (b"ETW1\x02\0\0\0[]", '"tensors" list'),
        (_message({"tensors": [_entry(dtype="object")]}, bytes(8)), "dtype"),
        (_message({"tensors": [_entry(shape=[-1])]}, bytes(8)), "shape"),
        (_message({"tensors": [_entry(shape=[True])]}, bytes(8)), "shape"),
        (_message({"tensors": [_entry(nbytes=12)]}, bytes(8)), "do not fit"),
        (_message({"tensors": [_entry(offset=4)]}, bytes(16)), "do not fit"),
        (_message({"tensors": [_entry()]}, bytes(4)), "truncated"),
        (_message({"tensors": [_entry(), _entry(offset=8)]}, bytes(16)), "twice"),
        (_message({"tensors": [_entry(shape=[1 << 40, 1 << 40])]}, bytes(8)), "do not fit"),
        (_message({"meta": [], "tensors": []}), '"meta"'),
    ],
)
def test_tensorwire_rejects_malformed_messages(body: bytes, reason: str) -> None:
    with pytest.raises(tensorwire.TensorWireError, match=reason.replace("(", r"\(")):
        tensorwire.decode(body)


def test_tensorwire_refuses_object_arrays() -> None:
    with pytest.raises(tensorwire.TensorWireError, match="dtype object"):
        tensorwire.encode({"x": np.array(["a"], dtype=object)})


# -- the gateway's HTTP client -------------------------------------------------------------
def _serve(replies: list[bytes | None], connections: list[int] | None = None) -> Any:
    """A raw HTTP server: one reply per request in order (None: close without answering)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if connections is not None:
            connections.append(1)
        while replies:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            reply = replies.pop(0)
            if reply is None:
                break
            writer.write(reply)
            await writer.drain()
        writer.close()

    return asyncio.start_server(handle, "127.0.0.1", 0)


def test_client_retries_a_kept_alive_connection_the_server_closed() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"

    async def main() -> list[bytes]:
        server = await _serve([ok, None, chunked])
        port = server.sockets[0].getsockname()[1]
        client = HttpClient()
        try:
            first = await client.request("POST", f"http://127.0.0.1:{port}/a", body=b"x", timeout_s=5)
            # the server drops the kept-alive connection on the next request: retried on a new one
            second = await client.request("POST", f"http://127.0.0.1:{port}/b", body=b"y", timeout_s=5)
            return [first.body, second.body]
        finally:
            client.close()
            server.close()

    assert asyncio.run(main()) == [b"ok", b"abcde"]


def test_client_errors_name_the_service() -> None:
    async def main() -> None:
        client = HttpClient()
        port = free_port()
        with pytest.raises(ServiceUnavailable, match=rf"^model@x at http://127.0.0.1:{port} is down"):
            await client.request("GET", f"http://127.0.0.1:{port}/health", timeout_s=1, service="model@x")
        server = await asyncio.start_server(lambda r, w: asyncio.sleep(30), "127.0.0.1", 0)  # never answers
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(ServiceTimeout, match="gave no answer within 200 ms"):
            await client.request("GET", f"http://127.0.0.1:{port}/", timeout_s=0.2, service="prep")
        server.close()
        with pytest.raises(ServiceUnavailable, match="not http://host:port"):
            await client.request("GET", "https://example.org/", timeout_s=1)

    asyncio.run(main())


def test_client_reuses_kept_alive_connections() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    connections: list[int] = []

    async def main() -> None:
        server = await _serve([ok] * 5, connections)
        port = server.sockets[0].getsockname()[1]
        client = HttpClient()
        for _ in range(5):
            r = await client.request("GET", f"http://127.0.0.1:{port}/", timeout_s=5)
            assert (r.status, r.body) == (200, b"ok")
        client.close()
        server.close()

    asyncio.run(main())
    assert len(connections) == 1
