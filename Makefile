# The README's two commands are `make dev` and `make test`; both set themselves up.
.PHONY: bootstrap dev test test-unit lint typecheck schemas bench clean

bootstrap:
	@./scripts/bootstrap.sh

# DEV_ARGS: talkstream dev's options, e.g. make dev DEV_ARGS='--openai-port 18081 --talkable-port 18082'
dev: bootstrap
	.venv/bin/talkstream dev $(DEV_ARGS)

# static checks first (seconds), then every test tier: the unit and functional tiers on two
# processes (pytest-xdist: they are CPU-bound and share nothing but the PostgreSQL cluster,
# which each leases from scripts/postgres.sh), then the integration tier on three: its tests
# mostly wait (for timeouts, deadlines, retries, brokers: on two processes they kept about one
# core of two busy), each process has its own broker and ports, and a module runs whole, in
# order, on one of them (--dist loadfile: its system once), the costliest modules first
# (tests/integration/conftest.py; --no-loadscope-reorder: not by their count of tests).
# With PYTEST_ARGS, a single pytest run with them, every tier in one process.
test: bootstrap
	.venv/bin/ruff check .
	.venv/bin/mypy
ifeq ($(strip $(PYTEST_ARGS)),)
	.venv/bin/python -m pytest tests/unit tests/functional -n 2
	.venv/bin/python -m pytest tests/integration -n 3 --dist loadfile --no-loadscope-reorder
else
	.venv/bin/python -m pytest $(PYTEST_ARGS)
endif

# PYTEST_ARGS='-n 0': in one process
test-unit: bootstrap
	.venv/bin/python -m pytest tests/unit tests/functional -n 2 $(PYTEST_ARGS)

lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

typecheck: bootstrap
	.venv/bin/mypy

schemas: bootstrap
	.venv/bin/python -m streams.ops.schemas

bench: bootstrap
	.venv/bin/talkstream bench

# the data directory the settings name (TALKSTREAM_DATA_DIR, default .data), its broker stopped
# first; nothing when a dev runs on it, or it holds what talkstream did not put there (README)
clean:
	@if [ -x .venv/bin/python ]; then .venv/bin/python -m streams.dev.clean; else \
	  echo "make clean: no .venv to read the settings with: make bootstrap first" >&2; exit 1; fi
