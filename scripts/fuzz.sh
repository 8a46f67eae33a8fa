#!/usr/bin/env bash
# Runs every native Go fuzz target in the repository for a short time (default 10s each), so CI
# exercises the parsers with fresh inputs on every run. Minimizing a new corpus entry is capped
# at 2s: by default it may take 60s, longer than the whole run, which stalls the engine. New
# crashers land in testdata/fuzz of the package (commit them: they become regression tests).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
status=0
while IFS= read -r line; do
	file="${line%%:*}"
	name="$(sed -E 's/^func (Fuzz[A-Za-z0-9_]*).*/\1/' <<<"${line#*:}")"
	pkg="./$(dirname "$file")"
	echo "fuzz: $pkg $name (${secs}s)"
	if ! go test -run='^$' -fuzz="^${name}\$" -fuzztime="${secs}s" -fuzzminimizetime=2s "$pkg" >/tmp/fuzz-$$.log 2>&1; then
		cat /tmp/fuzz-$$.log
		# A finding always leaves its input in testdata/fuzz. A run that ends only with the
		# engine's "context deadline exceeded" (a worker still minimizing a new corpus entry
		# when the time is up) found nothing: say so, do not fail the build on it.
		if grep -q 'Failing input written' /tmp/fuzz-$$.log || ! grep -q 'context deadline exceeded' /tmp/fuzz-$$.log; then
			status=1
		else
			echo "fuzz: WARNING: $name stopped by the engine's deadline without a finding"
		fi
	fi
done < <(grep -rn --include='*_test.go' -E '^func Fuzz[A-Za-z0-9_]*\(f \*testing\.F\)' internal cmd | sed -E 's/^([^:]*):[0-9]+:/\1:/')
rm -f /tmp/fuzz-$$.log
exit $status
