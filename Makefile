# The two Quickstart commands: `make demo` and `make test`. Both set up .venv themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test lint system-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# Device + demo extras only: the demo runs without TensorFlow.
$(VENV)/.demo: pyproject.toml | $(BIN)/python
	$(PIP) install -e ".[demo]"
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(PIP) install -e ".[train,camera,demo,test]"
	touch $@

demo: $(VENV)/.demo
	$(BIN)/edge-detect demo

# Integration tests use real system services: Mosquitto (MQTT), sshd (deploy), systemd-analyze (unit checks),
# and a C compiler for the native test helpers in tests/native/ (seccomp launcher, fake delegate library).
# Install whichever is missing when we may (CI runs as root).
SYSTEM_DEPS := mosquitto:/usr/sbin/mosquitto openssh-server:/usr/sbin/sshd systemd:/usr/bin/systemd-analyze \
               gcc:/usr/bin/gcc
system-deps:
	@missing=""; for d in $(SYSTEM_DEPS); do test -x "$${d#*:}" || missing="$$missing $${d%%:*}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing system packages: run 'sudo apt-get install$$missing'" >&2; exit 2; fi; fi

test: $(VENV)/.test system-deps
	$(BIN)/ruff check edge_detect edge_deploy training tests bench
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

lint: $(VENV)/.test
	$(BIN)/ruff check edge_detect edge_deploy training tests bench
