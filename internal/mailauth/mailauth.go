// Package mailauth authenticates senders: SPF (RFC 7208) for HELO and MAIL FROM, DKIM
// verification (RFC 6376, RFC 8463), ARC validation (RFC 8617), DMARC (RFC 7489) and the
// Authentication-Results header (RFC 8601). Every lookup goes through a dns.Resolver, so tests
// use dnstest and production the configured resolvers. The checks (SPFCheck, DKIMCheck,
// ARCCheck, DMARCCheck, AuthResultsCheck)
// plug into a policy.Chain in that order: each later one reads what the earlier ones found in
// the session's per-transaction state.
package mailauth

import (
	"context"

	"github.com/postamt/postamt/internal/dns"
	"github.com/postamt/postamt/internal/policy"
)

// stateKey is where the results of one transaction live in policy.Conn.Values.
const stateKey = "mailauth"

// state is what the checks of one transaction learnt, for DMARC and the header.
type state struct {
	txn     *policy.Txn // the transaction the MAIL FROM results belong to
	helo    *SPFResult  // HELO identity, per session
	mail    *SPFResult  // MAIL FROM identity (or postmaster@HELO for <>)
	dkim    []DKIMResult
	dkimRan bool
	arc     *ARCResult
	// arcTrusted is the newest sealer's d= when the ARC chain passes and that sealer is
	// trusted: DMARCCheck then does not apply a failing author domain's policy.
	arcTrusted string
	dmarc      *DMARCResult
}

// stateFor returns the transaction's state; a new transaction starts empty but keeps the HELO
// result of its session.
func stateFor(c *policy.Conn, t *policy.Txn) *state {
	st, _ := c.Values[stateKey].(*state)
	if st == nil {
		st = &state{}
		c.Values[stateKey] = st
	}
	if t != nil && st.txn != t {
		*st = state{txn: t, helo: st.helo}
	}
	return st
}

// lookupTXT adapts the resolver to go-msgauth's context-free callback.
func lookupTXT(ctx context.Context, r dns.Resolver) func(string) ([]string, error) {
	return func(name string) ([]string, error) { return r.LookupTXT(ctx, name) }
}

// skip leaves trusted and authenticated clients alone: their mail is ours, not a stranger's.
func skip(c *policy.Conn) bool { return c.Trusted || c.AuthUser != "" }
