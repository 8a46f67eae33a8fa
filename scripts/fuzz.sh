#!/usr/bin/env bash
# Runs every native Go fuzz target in the repository for a short time (default 10s each), so CI
# exercises the parsers with fresh inputs on every run. New crashers land in testdata/fuzz of the
# package (commit them: they become regression tests).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
status=0
while IFS= read -r line; do
	file="${line%%:*}"
	name="$(sed -E 's/^func (Fuzz[A-Za-z0-9_]*).*/\1/' <<<"${line#*:}")"
	pkg="./$(dirname "$file")"
	echo "fuzz: $pkg $name (${secs}s)"
	if ! go test -run='^$' -fuzz="^${name}\$" -fuzztime="${secs}s" "$pkg" >/tmp/fuzz-$$.log 2>&1; then
		cat /tmp/fuzz-$$.log
		status=1
	fi
done < <(grep -rn --include='*_test.go' -E '^func Fuzz[A-Za-z0-9_]*\(f \*testing\.F\)' internal cmd | sed -E 's/^([^:]*):[0-9]+:/\1:/')
rm -f /tmp/fuzz-$$.log
exit $status
