// Package router decides, for each recipient, whether Postamt accepts it and how it leaves the
// queue: the local mailbox it lands in (after aliases, plus-addressing and catch-all) or the
// remote domain it is relayed to. It also enforces relay control. It does no I/O.
package router

import (
	"strings"

	"github.com/postamt/postamt/internal/config"
	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/smtp"
)

// Router is built once from the [local] configuration and is safe for concurrent use.
type Router struct {
	domains   map[string]bool
	primary   string
	mailboxes map[string]string   // normalized key → configured address
	aliases   map[string][]string // normalized key → targets
	catchAll  map[string]string   // ASCII domain → target
	plusSep   string
	transport string
	acceptAll string                // transport that takes every recipient (the sandbox), or ""
	relayHost string                // "[host]:port" for all remote mail, or ""
	nextHops  map[string]mail.Route // ASCII domain → route template (the transport map)
}

// New builds a Router from validated configuration sections.
func New(c config.Local, out config.Outbound) *Router {
	r := &Router{
		relayHost: out.RelayHost,
		nextHops:  map[string]mail.Route{},
		domains:   map[string]bool{},
		mailboxes: map[string]string{},
		aliases:   map[string][]string{},
		catchAll:  map[string]string{},
		plusSep:   c.PlusSeparator,
		transport: c.Transport,
		acceptAll: c.AcceptAll,
	}
	for i, d := range c.Domains {
		d = strings.ToLower(d)
		r.domains[d] = true
		if i == 0 {
			r.primary = d
		}
	}
	for _, m := range c.Mailboxes {
		if k, ok := key(m); ok {
			r.mailboxes[k] = canonical(m)
		}
	}
	for from, to := range c.Aliases {
		if k, ok := key(from); ok {
			r.aliases[k] = to
		}
	}
	for d, to := range c.CatchAll {
		r.catchAll[strings.ToLower(d)] = to
	}
	for d, v := range out.Transports {
		if rt, err := mail.ParseTransportMap(v); err == nil { // Validate reported the others
			r.nextHops[smtp.Address{Domain: d}.ASCIIDomain()] = rt
		}
	}
	return r
}

// RemoteRoute is how mail for domain (ASCII form) leaves when it is sent on, whatever the
// local configuration says about it: the sandbox's release uses it.
func (r *Router) RemoteRoute(domain, addr string) mail.Route {
	return r.remoteRoute(strings.ToLower(domain), addr)
}

// remoteRoute is the one place that decides how mail for another domain leaves: the transport
// map first, then the relay host (smarthost), else the domain's MX. addr is the recipient, which
// an LMTP route delivers to.
func (r *Router) remoteRoute(domain, addr string) mail.Route {
	if rt, ok := r.nextHops[domain]; ok {
		if rt.NextHop == "" {
			rt.NextHop = addr
		}
		return rt
	}
	if r.relayHost != "" {
		return mail.Route{Transport: "remote", NextHop: r.relayHost}
	}
	return mail.Route{Transport: "remote", NextHop: domain}
}

// key normalizes an address for lookups: local parts compare case-insensitively (what users
// expect, and what Postfix and Dovecot do by default), domains in their ASCII form.
func key(addr string) (string, bool) {
	a, err := smtp.ParseAddress(addr, true)
	if err != nil {
		return "", false
	}
	return strings.ToLower(a.Local) + "@" + a.ASCIIDomain(), true
}

// canonical is the mailbox's stored form: lower-case local part and ASCII domain, which names
// the Maildir and is what LMTP servers are given.
func canonical(addr string) string {
	k, ok := key(addr)
	if !ok {
		return addr
	}
	return k
}

// IsLocal reports whether domain (any case, U- or A-labels) is one of ours.
func (r *Router) IsLocal(domain string) bool {
	return r.domains[smtp.Address{Domain: domain}.ASCIIDomain()]
}

// Reply texts follow Postfix's, which operators know from their logs.
var (
	errRelayDenied = smtp.NewReply(554, smtp.CodeDelivNotAuth, "Relay access denied")
	errNoSuchUser  = smtp.NewReply(550, smtp.CodeBadDestMailbox, "No such user here")
	errAliasLoop   = smtp.NewReply(554, smtp.CodeRoutingLoop, "Alias expansion loop")
)

// Resolve routes one RCPT TO path. authenticated says the client may relay (submission). It
// returns one or more recipients (aliases may expand), or the reply to refuse the path with.
func (r *Router) Resolve(p smtp.Path, authenticated bool) ([]mail.Recipient, *smtp.Reply) {
	if p.Null {
		return nil, smtp.NewReply(501, smtp.CodeBadDestSyntax, "The null path is not a valid recipient")
	}
	a := p.Addr
	if a.Domain == "" { // RCPT TO:<Postmaster> (RFC 5321 §4.1.1.3)
		a.Domain = r.primary
	}
	orig := a.String()
	if r.acceptAll != "" {
		// The sandbox takes any address in any domain and delivers nothing, so there is no relay
		// to guard against. One next hop for all, so that the queue hands a message's
		// recipients to the transport in one attempt and the store keeps one copy.
		return []mail.Recipient{{Addr: orig, Orig: orig, Route: mail.Route{Transport: r.acceptAll, NextHop: r.acceptAll}}}, nil
	}
	if p.SourceRoute {
		// RFC 5321 Appendix C lets us drop the route, but a route through us to another host is a
		// classic open-relay probe; nobody legitimate sends one today.
		return nil, errRelayDenied
	}
	if !r.IsLocal(a.Domain) {
		if !authenticated {
			return nil, errRelayDenied
		}
		return []mail.Recipient{{Addr: orig, Orig: orig, Route: r.remoteRoute(a.ASCIIDomain(), orig)}}, nil
	}
	// The percent hack (user%other@us), bang paths (other!user@us) and quoted local parts that
	// hide an address ("user@other"@us) were all once ways to make a server relay. A local part
	// with such characters is never an address we route onward.
	if strings.ContainsAny(a.Local, "%!@") {
		return nil, errRelayDenied
	}
	rcpts, reply := r.expand(a.Local, a.ASCIIDomain(), 0)
	if reply != nil {
		return nil, reply
	}
	for i := range rcpts {
		rcpts[i].Orig = orig
	}
	return rcpts, nil
}

const maxAliasDepth = 10

// expand resolves a local address: alias, then mailbox, then the address without its +tag, then
// postmaster, then the domain's catch-all.
func (r *Router) expand(local, domain string, depth int) ([]mail.Recipient, *smtp.Reply) {
	if depth > maxAliasDepth {
		return nil, errAliasLoop
	}
	k := strings.ToLower(local) + "@" + domain
	if targets, ok := r.aliases[k]; ok {
		return r.expandTargets(targets, depth)
	}
	if m, ok := r.mailboxes[k]; ok {
		return []mail.Recipient{r.localRcpt(m)}, nil
	}
	if r.plusSep != "" {
		if base, _, ok := strings.Cut(local, r.plusSep); ok && base != "" {
			bk := strings.ToLower(base) + "@" + domain
			if targets, ok := r.aliases[bk]; ok {
				return r.expandTargets(targets, depth)
			}
			if m, ok := r.mailboxes[bk]; ok {
				// Delivered-To keeps the tag so that users can filter on it.
				rc := r.localRcpt(m)
				rc.Addr = strings.ToLower(local) + "@" + domain
				return []mail.Recipient{rc}, nil
			}
		}
	}
	// RFC 5321 §4.5.1: every domain must accept postmaster.
	if strings.EqualFold(local, "postmaster") {
		return []mail.Recipient{r.localRcpt("postmaster@" + domain)}, nil
	}
	if target, ok := r.catchAll[domain]; ok {
		return r.expandTargets([]string{target}, depth)
	}
	return nil, errNoSuchUser
}

func (r *Router) expandTargets(targets []string, depth int) ([]mail.Recipient, *smtp.Reply) {
	var out []mail.Recipient
	for _, t := range targets {
		a, err := smtp.ParseAddress(t, true)
		if err != nil {
			continue // Validate refused these; be defensive.
		}
		if !r.IsLocal(a.Domain) {
			out = append(out, mail.Recipient{Addr: t, Route: r.remoteRoute(a.ASCIIDomain(), t)})
			continue
		}
		rc, reply := r.expand(a.Local, a.ASCIIDomain(), depth+1)
		if reply != nil {
			if reply == errAliasLoop {
				return nil, reply
			}
			// An alias target that does not exist is a configuration mistake; the rest of the
			// alias still works.
			continue
		}
		out = append(out, rc...)
	}
	if len(out) == 0 {
		return nil, errNoSuchUser
	}
	return out, nil
}

// localRcpt routes a mailbox of a local domain: by the local transport, unless the transport
// map sends the domain elsewhere (another LMTP server, an internal SMTP server). The map only
// says how; which addresses exist is still decided by mailboxes, aliases and catch-alls.
func (r *Router) localRcpt(mailbox string) mail.Recipient {
	if _, domain, ok := strings.Cut(mailbox, "@"); ok {
		if rt, ok := r.nextHops[domain]; ok {
			if rt.NextHop == "" {
				rt.NextHop = mailbox
			}
			return mail.Recipient{Addr: mailbox, Route: rt}
		}
	}
	return mail.Recipient{Addr: mailbox, Route: mail.Route{Transport: r.transport, NextHop: mailbox}}
}
