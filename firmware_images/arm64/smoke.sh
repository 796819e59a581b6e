#!/bin/sh
# The smoke subset run inside the Debian bookworm arm64 chroot by check.sh (no network:
# everything installs from /wheels). Fails on the first step that does not pass.
set -eu

PORT="${SMOKE_PORT:-18080}"
MODELS=/opt/edge-agent/models
STATE=/tmp/edge-state
VENV=/opt/edge-agent/venv
T0=$(date +%s)
step() { echo "== [$(($(date +%s) - T0)) s] $*"; }
# onnxruntime's cpuinfo reads /sys/devices/system/cpu, which the chroot does not have (the
# host's /sys is kept out on purpose): its warnings are expected here and filtered out
quiet() {
    "$@" 2>/tmp/stderr.txt && rc=0 || rc=$?
    grep -v -e 'Error in cpuinfo' -e 'cpuid_info warning' -e 'cpuinfo_initialize failed' /tmp/stderr.txt >&2 || true
    return "$rc"
}

echo "(onnxruntime's cpuinfo warnings about /sys are expected in this chroot and filtered out)"
step "architecture"
echo "uname -m: $(uname -m)"
python3 -c 'import platform, sys
print("platform.machine():", platform.machine(), "| python", sys.version.split()[0])
assert platform.machine() == "aarch64", platform.machine()'

step "no build tools in the root file system"
for tool in gcc cc g++ c++ clang make cmake; do
    if command -v "$tool" >/dev/null 2>&1; then echo "unexpected build tool: $tool"; exit 1; fi
done
echo "none of gcc cc g++ c++ clang make cmake"

step "install edge-agent from the aarch64 wheels, offline"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --no-index --find-links /wheels --no-compile \
    --disable-pip-version-check edge-agent
export PATH="$VENV/bin:$PATH"
quiet python -c 'import numpy, onnxruntime, cv2, ai_edge_litert, importlib.metadata as md
print("edge-agent", md.version("edge-agent"), "| numpy", numpy.__version__,
      "| onnxruntime", onnxruntime.__version__, "| ai-edge-litert", md.version("ai-edge-litert"),
      "| opencv", cv2.__version__)'

step "backends"
quiet edge-agent backends

step "golden self-tests of every bundled model (ONNX Runtime and LiteRT)"
quiet edge-agent --model-dir "$MODELS" --data-dir "$STATE" models selftest
quiet edge-agent --model-dir "$MODELS" --data-dir "$STATE" models list

step "predictions on every model's sample inputs"
quiet edge-agent --model-dir "$MODELS" --data-dir "$STATE" demo

step "gateway over HTTP on 127.0.0.1:$PORT"
EDGE_MODEL_DIR="$MODELS" EDGE_DATA_DIR="$STATE" \
    edge-agent serve --host 127.0.0.1 --port "$PORT" >/tmp/gateway.log 2>&1 &
GATEWAY=$!
stop_gateway() {
    kill -TERM "$GATEWAY" 2>/dev/null || true
    wait "$GATEWAY" 2>/dev/null || true
}
trap stop_gateway EXIT
python - "$PORT" "$MODELS/face/1/samples/astronaut.png" "$GATEWAY" <<'EOF'
import json, os, sys, time, urllib.error, urllib.request

port, image, gateway = sys.argv[1], sys.argv[2], int(sys.argv[3])
base = f"http://127.0.0.1:{port}"

def call(path, body=None, ctype=None):
    req = urllib.request.Request(base + path, data=body, method="POST" if body is not None else "GET")
    if ctype:
        req.add_header("content-type", ctype)
    with urllib.request.urlopen(req, timeout=120) as resp:
        return resp.status, resp.read()

deadline = time.monotonic() + 900  # preload self-tests every model first: slow under emulation
while True:
    try:
        status, body = call("/health")
        if status == 200:
            break
    except (urllib.error.URLError, ConnectionError, OSError):
        pass
    if not os.path.exists(f"/proc/{gateway}") or open(f"/proc/{gateway}/stat").read().split()[2] == "Z":
        sys.exit("the gateway exited:\n" + open("/tmp/gateway.log").read()[-3000:])
    if time.monotonic() > deadline:
        sys.exit("gateway did not answer /health in time:\n" + open("/tmp/gateway.log").read()[-3000:])
    time.sleep(1)
print("GET /health ->", status, body.decode()[:200])

status, body = call("/predict", json.dumps({"data": [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]}).encode(),
                    "application/json")
print("POST /predict (iris rows) ->", status, body.decode()[:400])
assert status == 200, status

with open(image, "rb") as f:
    status, body = call("/v1/models/face/predict", f.read(), "image/png")
print("POST /v1/models/face/predict (astronaut.png) ->", status, body.decode()[:600])
assert status == 200, status
assert "face" in body.decode(), "no face found in the sample photo"
EOF
stop_gateway
trap - EXIT
step "all smoke steps passed on $(uname -m)"
