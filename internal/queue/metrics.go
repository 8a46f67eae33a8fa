package queue

import (
	"strings"

	"github.com/postamt/postamt/internal/mail"
)

var resultNames = map[int]string{stateDelivered: "sent", statePending: "deferred", stateFailed: "failed"}

// countResult reports an attempt's outcome per destination. Only remote routes are named by
// their next hop; local deliveries are all one destination per transport, so the label set does
// not grow with the number of mailboxes.
func (q *Queue) countResult(r mail.Route, state int) {
	if q.opts.AttemptResult == nil {
		return
	}
	dest := r.Transport
	if limited(r) {
		dest = strings.ToLower(r.NextHop)
	}
	q.opts.AttemptResult(dest, resultNames[state])
}
