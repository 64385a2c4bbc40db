# The README's two commands are `make dev` and `make test`; both set themselves up.
.PHONY: bootstrap dev test test-unit lint typecheck schemas bench clean

bootstrap:
	@./scripts/bootstrap.sh

# DEV_ARGS: talkstream dev's options, e.g. make dev DEV_ARGS='--openai-port 18081 --talkable-port 18082'
dev: bootstrap
	.venv/bin/talkstream dev $(DEV_ARGS)

# static checks first (seconds), then every test tier
test: bootstrap
	.venv/bin/ruff check .
	.venv/bin/mypy
	.venv/bin/python -m pytest $(PYTEST_ARGS)

test-unit: bootstrap
	.venv/bin/python -m pytest tests/unit tests/functional $(PYTEST_ARGS)

lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

typecheck: bootstrap
	.venv/bin/mypy

schemas: bootstrap
	.venv/bin/python -m streams.ops.schemas

bench: bootstrap
	.venv/bin/talkstream bench

clean:
	-.venv/bin/talkstream kafka stop
	rm -rf .data
