package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// Duration is a time.Duration written as "90s", "5m", "2h" or, beyond Go's units, "5d".
type Duration time.Duration

func (d *Duration) UnmarshalText(b []byte) error {
	s := string(b)
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.ParseFloat(n, 64)
		if err != nil || days < 0 {
			return fmt.Errorf("invalid duration %q (use a number with s, m, h or d, e.g. \"30s\", \"5d\")", s)
		}
		*d = Duration(days * 24 * float64(time.Hour))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return fmt.Errorf("invalid duration %q (use a number with s, m, h or d, e.g. \"30s\", \"5d\")", s)
	}
	*d = Duration(v)
	return nil
}

func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Size is a byte count written as an integer or a string with a unit: "512KiB", "25MB", "1GiB".
type Size int64

var sizeUnits = map[string]int64{
	"": 1, "B": 1,
	"KB": 1000, "MB": 1000 * 1000, "GB": 1000 * 1000 * 1000,
	"KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30,
	"K": 1 << 10, "M": 1 << 20, "G": 1 << 30,
}

func (s *Size) UnmarshalText(b []byte) error {
	str := strings.TrimSpace(string(b))
	i := strings.IndexFunc(str, func(r rune) bool { return !unicode.IsDigit(r) && r != '.' })
	num, unit := str, ""
	if i >= 0 {
		num, unit = str[:i], strings.ToUpper(strings.TrimSpace(str[i:]))
	}
	mult, ok := sizeUnits[unit]
	v, err := strconv.ParseFloat(num, 64)
	if !ok || err != nil || v < 0 {
		return fmt.Errorf("invalid size %q (use bytes or a unit: B, KB, MB, GB, KiB, MiB, GiB)", str)
	}
	*s = Size(v * float64(mult))
	return nil
}

func (s Size) MarshalText() ([]byte, error) { return []byte(strconv.FormatInt(int64(s), 10)), nil }
