#!/usr/bin/env bash
# Prints the bin folder of a Python environment with the API tools Sluice is tested against
# (schemathesis, openapi-python-client), the project-local virtual environment
# .sluice/api-tools-venv (venv.sh: pinned, created on first use, reused after).
set -euo pipefail
VENV=$("$(dirname "${BASH_SOURCE[0]}")/venv.sh" api-tools-venv "schemathesis==4.32.5" "openapi-python-client==0.29.1")
echo "$VENV/bin"
