#!/bin/sh
# The run steps inside a container of the built image (check.sh copies this file into the
# container, never into the image). The gateway is the image's own entry point and default
# command; the health check is the image's own HEALTHCHECK command (SMOKE_HEALTHCHECK, the
# JSON of its config). Fails on the first step that does not pass.
set -eu

T0=$(date +%s)
step() { echo "== [$(($(date +%s) - T0)) s] $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
PORT="${EDGE_PORT:?EDGE_PORT not set}"
LOG=/tmp/gateway.log

step "user, interpreter, architecture"
echo "uid $(id -u), gid $(id -g), $(python3 -V), $(uname -m), PATH=$PATH"
[ "$(id -u)" = 1000 ] || fail "the image should run as uid 1000 (edge), runs as $(id -u)"
[ "$(command -v edge-agent)" = /opt/edge-agent/venv/bin/edge-agent ] ||
    fail "edge-agent is not the virtualenv's: $(command -v edge-agent || echo missing)"

step "no build tools in the runtime image"
for tool in gcc cc g++ c++ clang make cmake; do
    if command -v "$tool" >/dev/null 2>&1; then fail "unexpected build tool: $tool"; fi
done
echo "none of gcc cc g++ c++ clang make cmake"

step "edge-agent backends"
edge-agent backends >/tmp/backends.txt 2>&1 || { cat /tmp/backends.txt; fail "edge-agent backends exited non-zero"; }
cat /tmp/backends.txt
for backend in onnx litert; do
    grep -Eq "^$backend +available" /tmp/backends.txt || fail "backend $backend is not available"
done

# the image's ENTRYPOINT and CMD as a container start would run them
# shellcheck disable=SC2046 # the entry point and command, split into words on purpose
set -- $(python3 -c 'import json, os; print(" ".join(json.loads(os.environ["SMOKE_ENTRYPOINT"]) + json.loads(os.environ["SMOKE_CMD"])))')
step "start: $* (EDGE_PORT=$PORT)"
"$@" >"$LOG" 2>&1 &
GATEWAY=$!
stop_gateway() {
    kill -TERM "$GATEWAY" 2>/dev/null || true
    wait "$GATEWAY" 2>/dev/null || true
}
trap stop_gateway EXIT

step "the image's HEALTHCHECK until it passes: $SMOKE_HEALTHCHECK"
HEALTH="$(python3 -c '
import json, os, shlex
test = json.loads(os.environ["SMOKE_HEALTHCHECK"])
if test[0] == "CMD":
    print(shlex.join(test[1:]))
elif test[0] == "CMD-SHELL":
    print(test[1])
else:
    raise SystemExit(f"unsupported HEALTHCHECK {test}")
')"
deadline=$(($(date +%s) + ${SMOKE_READY_S:-600}))
until sh -c "$HEALTH" >/tmp/health.txt 2>&1; do
    kill -0 "$GATEWAY" 2>/dev/null || { tail -40 "$LOG"; fail "the gateway exited before it was healthy"; }
    [ "$(date +%s)" -lt "$deadline" ] || { cat /tmp/health.txt; tail -40 "$LOG"; fail "not healthy in time"; }
    sleep 1
done
echo "health check passed (exit 0): $HEALTH"
grep 'edge-entrypoint' "$LOG" || true

step "POST /predict (iris rows)"
python3 - "$PORT" <<'EOF'
import json, sys, urllib.request

url = f"http://127.0.0.1:{sys.argv[1]}/predict"
rows = [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]  # a setosa and a virginica of the iris data
req = urllib.request.Request(url, data=json.dumps({"data": rows}).encode(), method="POST")
req.add_header("content-type", "application/json")
with urllib.request.urlopen(req, timeout=60) as resp:
    status, body = resp.status, json.loads(resp.read())
print("POST /predict ->", status, json.dumps(body)[:300])
assert status == 200, status
classes = [max(range(len(p)), key=p.__getitem__) for p in body["prediction"]]
assert classes == [0, 2], f"expected classes [0, 2] (setosa, virginica), got {classes}"
assert body["model"] == "iris", body
EOF

stop_gateway
trap - EXIT
step "all run steps passed in the image on $(uname -m)"
