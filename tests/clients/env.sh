#!/usr/bin/env bash
# Prints the path of a Python with the inference clients Sluice is tested against
# (tritonclient[http], the KServe SDK, numpy), creating the project-local, git-ignored virtual
# environment .sluice/clients-venv on first use (pip, pinned versions) and reusing it after.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.sluice/clients-venv"
PACKAGES=("tritonclient[http]==2.73.0" "kserve==0.21.0" "numpy==2.4.6")
STAMP="$VENV/.installed"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "${PACKAGES[*]}" ]]; then
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    "$ROOT/deploy/local/stack.sh" packages python3-venv >&2
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PACKAGES[@]}" >&2
  echo "${PACKAGES[*]}" > "$STAMP"
fi
echo "$VENV/bin/python"
