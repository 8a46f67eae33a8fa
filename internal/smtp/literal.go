package smtp

import (
	"net/netip"
	"strings"
)

// isAddressLiteral accepts [IPv4] and [IPv6:addr] (RFC 5321 §4.1.3). General address literals
// (tag:content) are refused: nothing routes them.
func isAddressLiteral(d string) bool {
	if len(d) < 3 || d[len(d)-1] != ']' {
		return false
	}
	inner := d[1 : len(d)-1]
	if v6, ok := strings.CutPrefix(inner, "IPv6:"); ok {
		a, err := netip.ParseAddr(v6)
		return err == nil && a.Is6() && a.Zone() == ""
	}
	a, err := netip.ParseAddr(inner)
	return err == nil && a.Is4()
}
