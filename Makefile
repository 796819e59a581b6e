# The two commands of the README quick start: `make demo` and `make test`.
# Both set up what they need themselves (a virtualenv in .venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STATE ?= var/demo

.PHONY: demo demo-models mosquitto chromium postgresql shellcheck arm64 image image-arm64 test lint typecheck unit setup models bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The main job: a broker, the cloud service and two device agents, sample traffic, a rollout.
demo: $(STAMP) mosquitto
	$(BIN)/python demo/fleet.py

# Every bundled model on its sample inputs, offline (no broker, no server).
demo-models: $(STAMP)
	$(BIN)/edge-agent --data-dir $(DEMO_STATE) demo

# Debian packages: the MQTT broker (demo and tests start their own on free ports) and
# Chromium for the dashboard's browser tests (Playwright drives it; no browser download).
mosquitto:
	@bash scripts/sysdeps.sh mosquitto:/usr/sbin/mosquitto

chromium:
	@bash scripts/sysdeps.sh chromium:/usr/bin/chromium

# PostgreSQL server binaries: the cloud tests start their own server (initdb in a temporary
# directory, a free loopback port) and run every cloud test on SQLite and on it.
postgresql:
	@bash scripts/sysdeps.sh postgresql:$$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | tail -1)

# The shell scripts (firmware checks, provisioning, setup) through Debian's shellcheck.
shellcheck:
	@bash scripts/sysdeps.sh shellcheck:/usr/bin/shellcheck
	shellcheck -x firmware_images/*.sh firmware_images/*/*.sh scripts/*.sh models/scripts/*.sh

lint: $(STAMP)
	$(BIN)/ruff check edge_agent cloud_sync tests bench demo models/scripts
	$(BIN)/ruff format --check edge_agent cloud_sync tests bench demo

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

test: mosquitto chromium postgresql shellcheck lint typecheck unit

# The agent on Debian bookworm arm64 under qemu: offline install from aarch64 wheels, golden
# self-tests of every model on both backends, the gateway over HTTP. Root; ~1 min cached, ~5 min first.
arm64:
	bash firmware_images/arm64/check.sh

# The shipped image really built and run: firmware_images/Dockerfile with buildah (chroot
# isolation, vfs storage; no container registry) on a Debian bookworm base made here with
# debootstrap, then its health check, /predict and `edge-agent backends` inside it.
# Root; 1-2.5 min with the base cached, about 6.5 min first (see firmware_images/README.md).
image:
	@bash scripts/sysdeps.sh buildah:/usr/bin/buildah debootstrap:/usr/sbin/debootstrap
	bash firmware_images/image/check.sh

# The same for linux/arm64 under qemu binfmt (not in CI: about 5.5 min with the base cached,
# about 19 min the first time).
image-arm64:
	@bash scripts/sysdeps.sh buildah:/usr/bin/buildah debootstrap:/usr/sbin/debootstrap
	EDGE_IMAGE_ARCH=arm64 bash firmware_images/image/check.sh

bench: $(STAMP)
	$(BIN)/python bench/runtime.py

# Rebuild the bundled model packages (separate build venvs; not run by the tests).
models:
	bash models/scripts/build_all.sh

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
