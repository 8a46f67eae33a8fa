package app

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/postamt/postamt/internal/config"
	"github.com/postamt/postamt/internal/mailauth"
	"github.com/postamt/postamt/internal/observe"
	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/router"
	"github.com/postamt/postamt/internal/smtpserver"
	"github.com/postamt/postamt/internal/submission"
	"github.com/postamt/postamt/internal/users"
)

// startSubmission builds the submission server: AUTH against the user store, and the chain
// sender authorisation → per-user limits → Date/Message-ID fix-ups → DKIM signing (last, so it
// signs the message as it leaves).
func startSubmission(cfg *config.Config, log *slog.Logger, rt *router.Router, q smtpserver.Intake, tlsConf *tls.Config,
	hist *observe.Histograms, keys map[string][]*mailauth.DKIMKey) (*users.Store, *smtpserver.Server, error) {
	store, err := users.Open(cfg.Path(cfg.Submission.UsersDB))
	if err != nil {
		return nil, nil, fmt.Errorf("submission.users_db: %w", err)
	}
	s := cfg.Submission
	chain := &policy.Chain{Entries: []policy.Entry{
		// Fail closed: a user store or signing failure answers 451 and the client retries,
		// rather than letting unchecked or unsigned mail out.
		{Check: submission.SenderCheck{Senders: store}, FailClosed: true},
		{Check: &submission.Limits{MessagesPerHour: s.MaxMessagesPerHour, RecipientsPerMessage: s.MaxRecipientsPerMessage, RecipientsPerHour: s.MaxRecipientsPerHour}, FailClosed: true},
		{Check: submission.Fixups{Hostname: cfg.Hostname}, FailClosed: true},
		{Check: &mailauth.DKIMSigner{Keys: keys}, FailClosed: true},
	}}
	guard := submission.NewGuard(submission.GuardConfig{
		MaxFailuresPerIP: s.AuthFailuresPerIP, MaxFailuresPerUser: s.AuthFailuresPerUser,
		Window: s.AuthLockout.D(), Lockout: s.AuthLockout.D(), BaseDelay: s.AuthFailureDelay.D(), MaxDelay: 8 * time.Second,
	}, nil)
	l := cfg.SMTP
	srv := smtpserver.New(smtpserver.Options{
		Hostname: cfg.Hostname,
		Limits: smtpserver.Limits{
			MaxMessageSize: int64(l.MaxMessageSize), MaxRecipients: l.MaxRecipients, MaxLineLength: l.MaxLineLength,
			CommandTimeout: l.CommandTimeout.D(), DataTimeout: l.DataTimeout.D(),
			MaxConnections: l.MaxConnections, MaxConnectionsPerIP: l.MaxConnectionsPerIP, MaxErrors: l.MaxErrors,
		},
		TLS:                tlsConf,
		Router:             rt,
		Intake:             q,
		Logger:             log,
		IDs:                observe.NewIDGen(nil),
		Listener:           "submission",
		Policy:             chain,
		Auth:               &submission.Authenticator{Store: store, Guard: guard},
		AllowPlaintextAuth: !s.RequireTLS,
		RequireAuth:        true,
		HideClientIP:       s.HideClientIP,
		CommitLatency:      hist.Commit,
	})
	for _, d := range slices.Sorted(maps.Keys(keys)) {
		for _, k := range keys[d] {
			log.Info("DKIM signing", "domain", d, "selector", k.Selector, "algorithm", k.Algo())
		}
	}
	return store, srv, nil
}

// LoadDKIMKeys reads every configured key from dkim.key_dir/<domain>/<selector>.key.
func LoadDKIMKeys(cfg *config.Config) (map[string][]*mailauth.DKIMKey, error) {
	keys := map[string][]*mailauth.DKIMKey{}
	dir := cfg.Path(cfg.DKIM.KeyDir)
	for _, d := range slices.Sorted(maps.Keys(cfg.DKIM.Domains)) {
		for _, sel := range cfg.DKIM.Domains[d].Selectors {
			k, err := mailauth.LoadDKIMKey(mailauth.DKIMKeyPath(dir, d, sel))
			if err != nil {
				return nil, fmt.Errorf("dkim.domains.%s.selectors: selector %s: %w (create the key with: postamt dkim keygen %s --selector %s)", d, sel, err, d, sel)
			}
			keys[d] = append(keys[d], &mailauth.DKIMKey{Domain: d, Selector: sel, Signer: k})
		}
	}
	return keys, nil
}
