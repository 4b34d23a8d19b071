# Gatehouse: `make run` starts it (demo upstreams when no BACKEND_URL), `make test` tests it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint check clean bench load fuzz redis-server browser-deps e2e

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

# The tests start their own redis-server (tests/redis_server.py): Debian's package, installed
# here when it is not on PATH (as root, else through sudo).
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
		if [ "$$(id -u)" -eq 0 ]; then sudo=; elif command -v sudo >/dev/null 2>&1; then sudo=sudo; \
		else echo "make: redis-server is missing and cannot be installed without root: apt-get install redis-server" >&2; exit 1; fi; \
		echo "make: installing redis-server (Debian package)"; \
		$$sudo apt-get update -qq && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null; }

# The browser tests (tests/browser/) drive Debian's chromium with Playwright (never a browser of
# Playwright's own) and build the Next.js drop-in with the machine's Node.js: chromium and the
# fonts its pages render with are installed here when missing (as root, else through sudo; with
# Debian's recommends, as the machine's own probe ran it), and the example's locked packages with
# npm ci whenever its lock file changes.
NEXT_APP := examples/nextjs
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

$(NEXT_APP)/node_modules/.installed: $(NEXT_APP)/package.json $(NEXT_APP)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "make: the Next.js example needs Node.js >= 20.9 with npm (https://nodejs.org)" >&2; exit 1; }
	@node -e 'const [a, b] = process.versions.node.split(".").map(Number); if (a < 20 || (a === 20 && b < 9)) { console.error("make: the Next.js example needs Node.js >= 20.9, found " + process.versions.node); process.exit(1); }'
	cd $(NEXT_APP) && npm ci --no-audit --no-fund
	touch $@

browser-deps: $(NEXT_APP)/node_modules/.installed
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" -eq 0 ]; then sudo=; elif command -v sudo >/dev/null 2>&1; then sudo=sudo; \
		else echo "make: chromium is missing and cannot be installed without root: apt-get install chromium" >&2; exit 1; fi; \
		echo "make: installing chromium (Debian package)"; \
		$$sudo apt-get update -qq && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			chromium fonts-dejavu-core fonts-liberation >/dev/null; }

test: $(STAMP) redis-server browser-deps
	$(PY) -m pytest $(PYTEST_ARGS)
	GATEHOUSE_TEST_LOOP=uvloop $(PY) -m pytest $(UVLOOP_TESTS) -k "not test_1000_aborted_streams" $(PYTEST_ARGS)

# The browser tests alone (they run in `make test` too).
e2e: $(STAMP) browser-deps
	$(PY) -m pytest tests/browser $(PYTEST_ARGS)

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

# Two runs: one demo-mode process, then WORKERS=2 sharing state through a real redis-server.
load: $(VENV)/.load-installed redis-server
	$(PY) loadtest/run.py $(LOAD_ARGS)
	$(PY) loadtest/run.py --workers 2 --redis $(LOAD_ARGS)

clean:
	rm -rf $(VENV)
