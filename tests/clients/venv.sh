#!/usr/bin/env bash
# usage: venv.sh NAME PACKAGE...
# Prints the path of .sluice/NAME, a project-local, git-ignored Python virtual environment holding
# the pinned PACKAGES: created on first use, reinstalled when the pins change, reused otherwise.
# The tests' client environments (env.sh, api-tools-env.sh, browser-env.sh) are all made here.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
NAME=$1
shift
VENV="$ROOT/.sluice/$NAME"
STAMP="$VENV/.installed"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$*" ]]; then
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    "$ROOT/deploy/local/stack.sh" packages python3-venv >&2
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "$@" >&2
  echo "$*" > "$STAMP"
fi
echo "$VENV"
