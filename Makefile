# The two Quickstart commands: `make demo` and `make test`. Both set up .venv themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test lint bench-clean

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

# The integration tests need a real Mosquitto broker; install it when we may (CI runs as root).
mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; \
	  else echo "mosquitto is missing: run 'sudo apt-get install mosquitto'" >&2; exit 2; fi; }

test: $(VENV)/.test mosquitto
	$(BIN)/ruff check edge_detect edge_deploy training tests bench
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

lint: $(VENV)/.test
	$(BIN)/ruff check edge_detect edge_deploy training tests bench
