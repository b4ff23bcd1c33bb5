#!/usr/bin/env bash
# Prints two lines: the path of a Python with Playwright (the console's end-to-end tests drive a
# browser with it), then the path of the headless browser it launches. Installs what is missing
# and reuses it after: Debian's `chromium` package (Playwright's own browser download does not
# work here, so the tests pass `executable_path`) and Playwright for Python, pinned, in the
# project-local, git-ignored virtual environment .sluice/browser-venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
browser() { command -v chromium || true; }
if [[ -z "$(browser)" ]]; then
  "$ROOT/deploy/local/stack.sh" packages chromium >&2
fi
CHROMIUM="$(browser)"
[[ -n "$CHROMIUM" ]] || { echo "chromium is not on PATH after installing it" >&2; exit 1; }
VENV=$("$ROOT/tests/clients/venv.sh" browser-venv "playwright==1.65.3")
echo "$VENV/bin/python"
echo "$CHROMIUM"
