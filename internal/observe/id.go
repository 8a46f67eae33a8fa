// Package observe holds what makes Postamt observable: logger set-up and the identifiers (queue
// and session IDs) that tie log lines, replies and files together.
package observe

import (
	"encoding/base32"
	"encoding/binary"
	"sync"
	"time"
)

// IDs are 16 characters of base32 over 8 bytes of microseconds and a 2-byte counter: they sort by
// time, are safe as file names, and stay unique across restarts because the clock moves on.
var idEncoding = base32.HexEncoding.WithPadding(base32.NoPadding)

// IDGen generates unique IDs.
type IDGen struct {
	mu   sync.Mutex
	last uint64
	seq  uint16
	now  func() time.Time
}

// NewIDGen returns a generator; now may be nil for time.Now.
func NewIDGen(now func() time.Time) *IDGen {
	if now == nil {
		now = time.Now
	}
	return &IDGen{now: now}
}

// New returns the next ID.
func (g *IDGen) New() string {
	g.mu.Lock()
	us := uint64(g.now().UnixMicro())
	if us <= g.last {
		// Same microsecond (or a clock step backwards): count up instead, and when the counter
		// wraps, borrow the next microsecond so IDs never repeat.
		us = g.last
		g.seq++
		if g.seq == 0 {
			us++
		}
	} else {
		g.seq = 0
	}
	g.last = us
	var b [10]byte
	binary.BigEndian.PutUint64(b[:8], us)
	binary.BigEndian.PutUint16(b[8:], g.seq)
	g.mu.Unlock()
	return idEncoding.EncodeToString(b[:])
}
