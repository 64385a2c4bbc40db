#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: a virtual environment at .venv with the pinned
# packages and the `talkstream` command, and the Kafka broker's jars from Maven Central.
# Re-running it does nothing when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
stamp=.venv/.talkstream-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)

if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing pinned packages (constraints.txt)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -c constraints.txt -e '.[dev]'
  echo "$want" > "$stamp"
fi

# The broker's jars (no-op when present); fails with a clear message without Java or Maven.
# both Kafka lines: 4.4.0 (the default) and 3.9.1 (its smoke tests)
.venv/bin/talkstream kafka fetch-jars --all
