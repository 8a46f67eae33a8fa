package app

import (
	"fmt"

	"github.com/postamt/postamt/internal/config"
	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/policy/attachments"
	"github.com/postamt/postamt/internal/policy/clamav"
	"github.com/postamt/postamt/internal/policy/milter"
	"github.com/postamt/postamt/internal/policy/rspamd"
)

// contentChecks builds the chain entries of the content scanners, in the order a message
// meets them at the end of data: the cheap built-in attachment policy first, then milters
// (which also see connect, HELO, MAIL and RCPT), then ClamAV (a virus is a harder verdict than
// spam), then rspamd.
func contentChecks(cfg *config.Config) ([]policy.Entry, error) {
	k := cfg.Checks
	var es []policy.Entry
	entry := func(ch policy.Check, cc config.CheckCommon) {
		es = append(es, policy.Entry{Check: ch, Timeout: cc.Timeout.D(), FailClosed: cc.FailClosed})
	}
	if a := k.Attachments; a.Enabled {
		action, err := policy.ParseAction(a.Action)
		if err != nil {
			return nil, fmt.Errorf("checks.attachments.action: %w", err)
		}
		types := make([]attachments.Kind, len(a.BlockedTypes))
		for i, t := range a.BlockedTypes {
			types[i] = attachments.Kind(t)
		}
		c, err := attachments.New(attachments.Options{
			Action: action, MaxDepth: a.MaxDepth, MaxParts: a.MaxParts,
			BlockedExtensions: a.BlockedExtensions, BlockedTypes: types,
			ScanArchives: a.ScanArchives, MaxArchiveEntries: a.MaxArchiveEntries,
			MaxArchiveSize: int64(a.MaxArchiveSize), MaxArchiveDepth: a.MaxArchiveDepth,
			BlockEncrypted: a.BlockEncryptedArchives,
		})
		if err != nil {
			return nil, err
		}
		entry(c, a.CheckCommon)
	}
	for i, m := range k.Milters {
		if !m.Enabled {
			continue
		}
		network, addr, err := config.MilterAddress(m.Address)
		if err != nil {
			return nil, fmt.Errorf("checks.milter[%d].address: %w", i, err)
		}
		c, err := milter.New(milter.Options{Name: m.Name, Network: network, Address: addr, Hostname: cfg.Hostname, Timeout: m.Timeout.D()})
		if err != nil {
			return nil, err
		}
		entry(c, m.CheckCommon)
	}
	if a := k.ClamAV; a.Enabled {
		action, err := policy.ParseAction(a.Action)
		if err != nil {
			return nil, fmt.Errorf("checks.clamav.action: %w", err)
		}
		c, err := clamav.New(clamav.Options{Address: a.Address, Action: action, MaxSize: int64(a.MaxSize)})
		if err != nil {
			return nil, err
		}
		entry(c, a.CheckCommon)
	}
	if r := k.Rspamd; r.Enabled {
		action, err := policy.ParseAction(r.RejectAction)
		if err != nil {
			return nil, fmt.Errorf("checks.rspamd.reject_action: %w", err)
		}
		max := int64(r.MaxSize)
		if max == 0 {
			max = int64(cfg.SMTP.MaxMessageSize)
		}
		c, err := rspamd.New(rspamd.Options{URL: r.URL, Password: r.Password, RejectAction: action, MaxSize: max})
		if err != nil {
			return nil, err
		}
		entry(c, r.CheckCommon)
	}
	return es, nil
}
