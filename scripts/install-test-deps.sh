#!/usr/bin/env bash
# Installs the real mail software that the interop tests (test/interop, build tag
# "interop") talk to: Postfix, Dovecot (core + LMTP), swaks, msmtp, python3, and
# Chromium (with a font) for the sandbox web UI test.
#
# - Debian bookworm, run as root (uses sudo when not root and sudo exists).
# - Idempotent: a fast no-op when everything is installed; `apt-get update` only
#   runs when at least one package is missing.
# - Non-interactive; Postfix is preseeded to "No configuration", so no system
#   Postfix gets configured or started on port 25. Dovecot's packaged service is
#   not started either (policy-rc.d denies starts during the install; the tests
#   start their own instances from temp dirs).
# Only the Debian archive is used.
set -euo pipefail

# libnet-ssleay-perl: swaks needs it for --tls (it is only a Recommends). iproute2: `ip netns`
# for the port-25 test (TestDeliverToPostfixPort25). python3-dkim: the independent DKIM verifier
# for the signing tests.
# rspamd, clamav-daemon, opendkim: the content-scanning tests start their own instances from
# temp dirs on loopback ports; clamd gets a tiny signature database the test writes.
# clamav-freshclam comes in as a dependency, but like the other services it is not started
# (policy-rc.d below) and is disabled afterwards, so no signature download ever happens.
# chromium, fonts-dejavu-core: the sandbox web UI test drives headless Chromium.
PKGS=(postfix swaks libnet-ssleay-perl dovecot-core dovecot-lmtpd msmtp python3 python3-dkim python3-authres ca-certificates openssl iproute2
	rspamd clamav-daemon opendkim opendkim-tools chromium fonts-dejavu-core)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
		echo "install-test-deps: must run as root" >&2; exit 1
	fi
fi

missing=()
for p in "${PKGS[@]}"; do
	status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	if [ "$status" != "install ok installed" ]; then
		missing+=("$p")
	fi
done
if [ ${#missing[@]} -eq 0 ]; then
	echo "install-test-deps: all present (${PKGS[*]})"
	exit 0
fi

echo "install-test-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
echo "postfix postfix/mailname string localhost" | $SUDO debconf-set-selections

# Keep maintainer scripts from starting services (no system postfix/dovecot).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
	$SUDO chmod 755 "$policy"
	created_policy=1
fi
cleanup() { if [ "$created_policy" = 1 ]; then $SUDO rm -f "$policy"; fi; }
trap cleanup EXIT

$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
	-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
	"${missing[@]}"

# Belt and braces: if a daemon we just installed got started anyway, stop it
# (it would hold port 25/24 and is not what the tests use).
just_installed() { [[ " ${missing[*]} " == *" $1 "* ]]; }
if just_installed postfix && $SUDO postfix status >/dev/null 2>&1; then
	$SUDO postfix stop >/dev/null 2>&1 || true
fi
if just_installed dovecot-core && [ -f /run/dovecot/master.pid ]; then
	$SUDO doveadm stop >/dev/null 2>&1 || true
fi
# The packaged scanners must not run system-wide (they would hold ports 11332-11334, 3310,
# the clamd socket, and rspamd would try to fetch maps).
for svc in rspamd clamav-daemon clamav-freshclam opendkim; do
	if just_installed "$svc" && command -v systemctl >/dev/null 2>&1; then
		$SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
	fi
done
for pidf in /run/rspamd/rspamd.pid /run/clamav/clamd.pid /run/opendkim/opendkim.pid; do
	if [ -f "$pidf" ]; then $SUDO kill "$(cat "$pidf")" >/dev/null 2>&1 || true; fi
done
echo "install-test-deps: done"
