package config

import (
	"net/netip"
	"testing"
)

// FuzzParseCodes: DNS list codes and trusted networks (ParseNetworks is the same parser) come
// out as valid, masked prefixes, and a single address as a one-address prefix that contains it.
func FuzzParseCodes(f *testing.F) {
	for _, s := range []string{"127.0.0.2", "127.0.0.0/24", "127.0.0.1/8", "::1", "2001:db8::/32", "fe80::1%eth0",
		"::ffff:127.0.0.2", "10.0.0.0/33", "", "bogus"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out, err := ParseCodes([]string{in})
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error text")
			}
			return
		}
		if len(out) != 1 {
			t.Fatalf("%q: %d prefixes", in, len(out))
		}
		p := out[0]
		if !p.IsValid() || p != p.Masked() {
			t.Fatalf("%q: prefix %v not valid and masked", in, p)
		}
		// A zone ("fe80::1%eth0") is dropped: the prefix holds the bare address.
		if a, err := netip.ParseAddr(in); err == nil && (p.Bits() != a.BitLen() || !p.Contains(a.WithZone(""))) {
			t.Fatalf("address %q became %v", in, p)
		}
	})
}
