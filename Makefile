# Gatehouse: `make run` starts it (demo upstreams when no BACKEND_URL), `make test` tests it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint check clean bench load fuzz

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

run: $(STAMP)
	$(PY) server.py

# The suite runs on asyncio; the upstream, relay and front-door tests run again on uvloop, which production
# uses (transports differ in pause_reading, EOF and resets). Deselected there: the 1,000-stream
# test, whose own 1,000 clients share the loop and miss its 5 s head deadline now and then on
# uvloop (with Tornado's client as with gatehouse's); scenario B covers 9,500 streams on uvloop.
UVLOOP_TESTS := tests/test_relay.py tests/test_upstream_client.py tests/test_upstream_pool.py \
	tests/test_upstream_framing.py tests/test_upstream_tls.py tests/test_proxy_bodies.py tests/test_chat.py \
	tests/test_front_door.py tests/test_front_door_framing.py tests/test_body_limits.py

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)
	GATEHOUSE_TEST_LOOP=uvloop $(PY) -m pytest $(UVLOOP_TESTS) -k "not test_1000_aborted_streams" $(PYTEST_ARGS)

# The property-based suite runs in `make test` with a bounded profile; this runs it much longer
# (not in CI). HYPOTHESIS_PROFILE is read by tests/fuzz_strategies.py.
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest tests/test_fuzz_*.py $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

check: lint test

# Peer benchmarks (docs/performance.md) and locust load tests: their own pinned tools.
$(VENV)/.bench-installed: requirements-bench.txt $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-bench.txt
	touch $@

$(VENV)/.load-installed: requirements-load.txt $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-load.txt
	touch $@

bench: $(VENV)/.bench-installed
	$(PY) bench/run.py $(BENCH_ARGS)

load: $(VENV)/.load-installed
	$(PY) loadtest/run.py $(LOAD_ARGS)

clean:
	rm -rf $(VENV)
