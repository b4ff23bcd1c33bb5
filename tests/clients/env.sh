#!/usr/bin/env bash
# Prints the path of a Python with the inference clients Sluice is tested against
# (tritonclient[http], the KServe SDK, numpy), in the project-local virtual environment
# .sluice/clients-venv (venv.sh: pinned, created on first use, reused after).
set -euo pipefail
VENV=$("$(dirname "${BASH_SOURCE[0]}")/venv.sh" clients-venv "tritonclient[http]==2.73.0" "kserve==0.21.0" "numpy==2.4.6")
echo "$VENV/bin/python"
