# Two entry points: `make dev` runs relaygate, `make test` runs every check.
# Needs only python3 (3.11+) and make: uv and the locked environment are installed on first use.

UV_VERSION := 0.13.8
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
export UV_PYTHON_PREFERENCE := only-system

.PHONY: dev test test-fast lint format bench bench-alternatives chaos clean compose-smoke bytecode

PORT ?= 8000

dev: bytecode
	.venv/bin/relaygate dev --port $(PORT)

test: lint bytecode
	.venv/bin/pytest

lint: .venv/.synced
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

# Rewrites files: ruff's formatter, then the import order and other fixes `ruff check` can make.
format: .venv/.synced
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

# Every test that starts no relaygate process and no browser (the `e2e` and `browser` markers, set in
# tests/conftest.py): unit, in-process gateway and store-level tests, about a minute.
test-fast: bytecode
	.venv/bin/pytest -m "not e2e and not browser"

bench: bytecode
	.venv/bin/python bench/run.py

# Fault injection with every request verified (bench/chaos.py, bench/README.md "Chaos"); run by hand, not part of `test`.
# Exits non-zero on any anomaly. CHAOS_ARGS passes options, e.g. CHAOS_ARGS="--duration 120 --clients 30".
chaos: bytecode
	nice -n 10 .venv/bin/python bench/chaos.py $(CHAOS_ARGS)

# sse-starlette and fakeredis against what relaygate uses instead (README); not project dependencies.
bench-alternatives: .venv/.synced
	$(UV) run --no-project --with-editable . --with sse-starlette==3.4.11 --with 'fakeredis[lua]==2.37.1' \
		python bench/alternatives.py

# Builds the images and runs docker-compose.yaml for real with podman (compose/smoke.sh); not part of `test`.
compose-smoke: .venv/.synced
	bash compose/smoke.sh

.tools/bin/uv:
	python3 -m venv .tools || { echo "python3 -m venv failed: install python3-venv (or put uv on PATH)"; exit 1; }
	.tools/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --compile-bytecode --extra worker --extra dev
	touch $@

# relaygate's own modules, compiled as the locked packages are: where PYTHONDONTWRITEBYTECODE is set (this
# CI's machines set it) Python writes no .pyc, and every process compiled them at each start (~0.15 s).
# Only what changed since the last run is compiled again.
bytecode: .venv/.synced
	.venv/bin/python -m compileall -q api cli common dispatcher orchestrator workers

clean:
	rm -rf .venv .tools .pytest_cache .mypy_cache .ruff_cache
