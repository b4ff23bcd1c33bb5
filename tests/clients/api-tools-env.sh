#!/usr/bin/env bash
# Prints the bin folder of a Python environment with the API tools Sluice is tested against
# (schemathesis, openapi-python-client), creating the project-local, git-ignored virtual
# environment .sluice/api-tools-venv on first use (pip, pinned versions) and reusing it after.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.sluice/api-tools-venv"
PACKAGES=("schemathesis==4.32.5" "openapi-python-client==0.29.1")
STAMP="$VENV/.installed"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "${PACKAGES[*]}" ]]; then
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    "$ROOT/deploy/local/stack.sh" packages python3-venv >&2
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PACKAGES[@]}" >&2
  echo "${PACKAGES[*]}" > "$STAMP"
fi
echo "$VENV/bin"
