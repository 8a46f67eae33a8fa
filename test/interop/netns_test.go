//go:build interop

package interop

import (
	"context"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// The namespace and the /30 between it and the host. 10.200.77.0/30 is private and, on the
// machines these tests run on, unused; a leftover from a crashed run is removed first.
const (
	mxNetNS    = "postamt-mx25"
	mxVethHost = "pmx25h" // interface names have at most 15 bytes
	mxVethNS   = "pmx25n"
	mxHostAddr = "10.200.77.1"
	mxNSAddr   = "10.200.77.2"
)

// TestDeliverToPostfixPort25: the TestDeliverToPostfixMX scenario with nothing overridden. A
// real Postfix listens on port 25 of an address that only exists in a network namespace the
// test creates (veth pair, 10.200.77.1 ↔ 10.200.77.2); the test's DNS server names that
// address as remote.test's MX, and Postamt runs with its default outbound port. bob's copy
// arrives in Postfix's Maildir over STARTTLS, and nobody's 550 comes back to the sender as a
// DSN quoting Postfix.
func TestDeliverToPostfixPort25(t *testing.T) {
	requireRoot(t)
	requireTool(t, "postfix")
	makeMXNamespace(t)
	p, pf := deliverToPostfixMX(t, postfixOptions{Listen: net.JoinHostPort(mxNSAddr, "25"), NetNS: mxNetNS}, mxNSAddr)

	if regexp.MustCompile(`(?m)^port\s*=`).MatchString(p.Config) {
		t.Fatalf("the config overrides the outbound port; this test is about the default:\n%s", p.Config)
	}
	// Postfix saw Postamt come in over the veth pair, so the message took port 25 on
	// 10.200.77.2 and nothing else.
	if !regexp.MustCompile(`connect from [^\[]*\[` + regexp.QuoteMeta(mxHostAddr) + `\]`).MatchString(pf.Logs()) {
		t.Errorf("postfix log has no connection from %s", mxHostAddr)
	}
}

// makeMXNamespace creates mxNetNS with one end of a veth pair (mxNSAddr/30, loopback up) and
// the other end on the host (mxHostAddr/30). The cleanup deletes both, also when the test
// fails; it is registered before anything that runs inside the namespace, so it runs last.
func makeMXNamespace(t *testing.T) {
	t.Helper()
	ip := requireTool(t, "ip")
	run := func(args ...string) error {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		out, err := exec.CommandContext(ctx, ip, args...).CombinedOutput()
		if err != nil {
			return &ipError{args: args, out: strings.TrimSpace(string(out)), err: err}
		}
		return nil
	}
	drop := func() {
		// Deleting the namespace destroys the veth end inside it, and with it the pair; the
		// host end is deleted by name too in case the pair was only half set up.
		run("netns", "delete", mxNetNS)
		run("link", "delete", mxVethHost)
	}
	drop()
	t.Cleanup(drop)
	for _, args := range [][]string{
		{"netns", "add", mxNetNS},
		{"link", "add", mxVethHost, "type", "veth", "peer", "name", mxVethNS},
		{"link", "set", mxVethNS, "netns", mxNetNS},
		{"addr", "add", mxHostAddr + "/30", "dev", mxVethHost},
		{"link", "set", mxVethHost, "up"},
		{"-n", mxNetNS, "addr", "add", mxNSAddr + "/30", "dev", mxVethNS},
		{"-n", mxNetNS, "link", "set", mxVethNS, "up"},
		{"-n", mxNetNS, "link", "set", "lo", "up"},
	} {
		if err := run(args...); err != nil {
			t.Fatalf("network namespace set-up: %v", err)
		}
	}
}

type ipError struct {
	args []string
	out  string
	err  error
}

func (e *ipError) Error() string {
	return "ip " + strings.Join(e.args, " ") + ": " + e.err.Error() + ": " + e.out
}
