#!/usr/bin/env bash
# Offline checks of everything under deploy/ and grafana/: no Docker, no cluster, no running stack.
#
#   deploy/check.sh
#
#   1. Prometheus: promtool check config (local and compose configurations), promtool check rules,
#      promtool test rules (deploy/prometheus/tests/rules_test.yml).
#   2. Grafana: the dashboards are what grafana/dashboards.py generates and follow its rules; every
#      metric a dashboard or rule reads is emitted by Sluice (grafana/queries.py --check-names).
#   3. Compose and Dockerfile: deploy/check_compose.py (schema, services, settings, mounts).
#   4. Kubernetes: deploy/k8s/validate.py (render the kustomizations, validate every object).
#   5. Shell: bash -n on the scripts (and shellcheck when installed).
#
# Installs what is missing and reuses what is there: promtool from Debian's prometheus package
# (deploy/local/stack.sh packages), PyYAML, jsonschema and kubernetes-validate in a virtual
# environment under ~/.cache/sluice/venv unless python3 already has them. Runs every check, then
# exits 1 if any failed, naming each.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV="${SLUICE_CHECK_VENV:-$HOME/.cache/sluice/venv}"

say() { printf '\033[1m[check]\033[0m %s\n' "$*" >&2; }
FAILED=()
PASSED=0
step() { # name command...
  local name=$1; shift
  say "$name"
  if "$@"; then PASSED=$((PASSED + 1)); else FAILED+=("$name"); say "FAILED: $name"; fi
}

# ---------- tools ----------
if ! command -v promtool >/dev/null; then
  say "installing Debian's prometheus package for promtool"
  deploy/local/stack.sh packages prometheus >&2 || say "could not install prometheus"
fi

PYTHON=python3
if ! python3 -c 'import yaml, jsonschema, kubernetes_validate' 2>/dev/null; then
  if ! "$VENV/bin/python" -c 'import yaml, jsonschema, kubernetes_validate' 2>/dev/null; then
    say "installing PyYAML, jsonschema and kubernetes-validate into $VENV"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
      deploy/local/stack.sh packages python3-venv >&2 && python3 -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check pyyaml jsonschema kubernetes-validate >&2 \
      || say "pip could not install the Python packages"
  fi
  PYTHON="$VENV/bin/python"
fi

# ---------- checks ----------
prometheus_checks() {
  command -v promtool >/dev/null || { say "promtool is missing (apt-get install prometheus)"; return 1; }
  local rc=0
  # The local config's file_sd folder exists only once the stack ran: promtool just warns.
  promtool check config deploy/prometheus/prometheus.yml >&2 || rc=1
  promtool check config deploy/prometheus/compose.yml >&2 || rc=1
  promtool check rules deploy/prometheus/rules/*.yml >&2 || rc=1
  promtool test rules deploy/prometheus/tests/rules_test.yml >&2 || rc=1
  return $rc
}

grafana_checks() {
  "$PYTHON" grafana/dashboards.py --check && "$PYTHON" grafana/queries.py --check-names --quiet
}

shell_checks() {
  local rc=0 f
  for f in deploy/check.sh deploy/local/stack.sh dev; do bash -n "$f" || rc=1; done
  if command -v shellcheck >/dev/null; then
    shellcheck -S warning deploy/check.sh deploy/local/stack.sh >&2 || rc=1
  fi
  return $rc
}

step "Prometheus configuration and rules (promtool)" prometheus_checks
step "Grafana dashboards and the metrics they read" grafana_checks
step "docker compose file and Dockerfile" "$PYTHON" deploy/check_compose.py
step "Kubernetes manifests (kustomize render + kubernetes-validate)" "$PYTHON" deploy/k8s/validate.py
step "shell scripts parse" shell_checks

if [ ${#FAILED[@]} -gt 0 ]; then
  say "deploy checks: ${#FAILED[@]} failed: ${FAILED[*]}"
  exit 1
fi
say "deploy checks: all $PASSED passed"
