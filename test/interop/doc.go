// Package interop holds Postamt's real-peer interoperability tests: swaks,
// Python's smtplib, msmtp, a real Postfix relaying into Postamt and a real
// Dovecot receiving from Postamt over LMTP, and dkimpy (python3-dkim) sealing and
// validating ARC chains against Postamt's.
//
// The tests are behind the build tag "interop" and need the peer software
// installed (as root on Debian: scripts/install-test-deps.sh):
//
//	scripts/install-test-deps.sh
//	go test -tags interop -count=1 -v ./test/interop/
//
// Each test builds bin/postamt into a temp dir (or uses $POSTAMT_BIN), starts
// it with a generated config on a free 127.0.0.1 port and stops it at cleanup.
// A missing peer tool skips the test, or fails it when CI=true. Only loopback
// addresses are used. On failure the cleanups log Postamt's stderr, Postfix's
// maillog and Dovecot's log; INTEROP_LOGS=1 logs them always.
package interop
