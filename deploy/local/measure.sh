# Sourced by the measuring scripts (capacity.sh, idle.sh), which set TAG to their name first.
TARGET=${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}

say() { printf '\033[1m[%s]\033[0m %s\n' "$TAG" "$*" >&2; }
die() { printf '\033[31m[%s] error:\033[0m %s\n' "$TAG" "$*" >&2; exit 1; }

# The binary to measure: SLUICE_BIN, else the release build if there is one, else the debug build.
SLUICE=${SLUICE_BIN:-}
if [ -z "$SLUICE" ]; then
  for build in release debug; do
    if [ -x "$TARGET/$build/sluice" ]; then SLUICE="$TARGET/$build/sluice"; break; fi
  done
fi
[ -x "${SLUICE:-}" ] || die "no sluice binary: cargo build --release --bin sluice (or set SLUICE_BIN)"

# Deletes the topics under PREFIX from the broker at ADDRESS (host:port): a measuring run's topics
# would otherwise stay, and every stored partition adds to the broker's idle work.
delete_topics() { # address prefix
  local name
  nisshi topic list --broker "tcp://$1" 2>/dev/null \
    | python3 -c 'import json, sys; [print(t["name"]) for t in json.load(sys.stdin) if t["name"].startswith(sys.argv[1])]' "$2" \
    | while read -r name; do nisshi topic delete --broker "tcp://$1" "$name" >/dev/null 2>&1 || true; done
}
