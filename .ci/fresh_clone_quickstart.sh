#!/usr/bin/env bash
# CI: the README's quick start, as a new user runs it: a fresh clone of this repository in an empty
# folder (no ../shared/data beside it, no WBC_DATA_DIR), then the README's first command exactly as
# written (taken from README.md, so the two cannot drift), then a check that every shipped example
# field has its results.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for d in "$work/shared" "$(dirname "$work")/shared"; do
  if [ -e "$d" ]; then echo "fresh-clone check: $d exists; it must not" >&2; exit 1; fi
done

if [ "${WBC_CI_WORKTREE:-0}" = 1 ]; then  # developers: try the uncommitted working tree instead of HEAD
  mkdir "$work/wbc"
  (cd "$repo" && git ls-files -co --exclude-standard -z | while IFS= read -r -d '' f; do
     if [ -f "$f" ]; then cp --parents "$f" "$work/wbc/"; fi
   done)
else
  git clone -q "$repo" "$work/wbc"
fi
cd "$work/wbc"
# the first ```bash block under "## Quick start"
cmd="$(awk '/^## Quick start/{q=1} q&&/^```bash/{f=1;next} f&&/^```/{exit} f{print}' README.md)"
[ -n "$cmd" ] || { echo "fresh-clone check: no command under '## Quick start' in README.md" >&2; exit 1; }
echo "fresh clone in $work/wbc; running the README's first command:"
echo "  $cmd"
clean_path="$(printf '%s' "$PATH" | tr ':' '\n' | grep -v '/\.venv/bin$' | paste -sd: -)"
env -u WBC_DATA_DIR -u VIRTUAL_ENV PATH="$clean_path" bash -c "$cmd" > "$work/quickstart.log" 2>&1 \
  || { cat "$work/quickstart.log"; echo "fresh-clone check: the quick start failed" >&2; exit 1; }

missing=0
n=0
for f in src/wbc/example_fields/*.jpg; do
  stem="$(basename "$f" .jpg)"
  n=$((n + 1))
  for out in "out/$stem.json" "out/$stem.png"; do
    [ -s "$out" ] || { echo "fresh-clone check: $out missing" >&2; missing=1; }
  done
done
for out in out/cells.csv out/differential.csv out/report.html; do
  [ -s "$out" ] || { echo "fresh-clone check: $out missing" >&2; missing=1; }
done
[ "$n" -ge 5 ] || { echo "fresh-clone check: only $n example fields shipped" >&2; missing=1; }
if grep -qE "(^|[^0-9A-Za-z/])1/6[[:space:]]*2/6" "$work/quickstart.log"; then  # "1/62/6...": counters
  echo "fresh-clone check: progress counters in a log (not a terminal)" >&2; missing=1
fi
[ "$missing" = 0 ] || { cat "$work/quickstart.log"; exit 1; }
tail -n 12 "$work/quickstart.log"
echo "fresh-clone check: results for all $n example fields"

# The README's second command (the test suite), in the same clone: tests needing ../shared/data skip.
# Opt-in (WBC_CI_FRESH_TESTS=1): it runs the whole suite a second time.
if [ "${WBC_CI_FRESH_TESTS:-0}" = 1 ]; then
  cmd2="$(awk '/^## Quick start/{q=1} q&&/^```bash/{n++} q&&n==2&&/^```bash/{f=1;next} f&&/^```/{exit} f{print}' README.md)"
  echo "running the README's second command: $cmd2"
  env -u WBC_DATA_DIR -u VIRTUAL_ENV PATH="$clean_path" bash -c "$cmd2"
fi
