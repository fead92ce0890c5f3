# The two commands a newcomer needs: `make demo` and `make test`.
# Both install exactly uv.lock (made by `make lock`) into .venv with a pinned uv,
# which is itself bootstrapped from PyPI into .tools/.
PYTHON ?= python3
VENV ?= .venv
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.housevox-installed
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))

.PHONY: install lock demo test test-fast clean

install: $(STAMP)

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --extra dev --compile-bytecode --python $(PYTHON)
	touch $(STAMP)

lock: | $(UV)
	$(UV) lock

demo: $(STAMP)
	$(PY) -m housevox.fit fit --config configs/demo.yaml
	$(PY) -m housevox.demo_proof lightning_logs/demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) $(TOOLS) lightning_logs demo
