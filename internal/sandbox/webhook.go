package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"time"
)

// RunWebhook POSTs the summary of every captured message to url as JSON until ctx ends. A
// failed call is logged and not retried: the webhook is a convenience, the store is the record.
func RunWebhook(ctx context.Context, s *Store, url string, client *http.Client, log *slog.Logger) {
	for ctx.Err() == nil {
		events, stop := s.Subscribe()
		for {
			var ev Event
			var ok bool
			select {
			case ev, ok = <-events:
			case <-ctx.Done():
			}
			if !ok {
				break
			}
			if ev.Type != "new" || ev.Message == nil {
				continue
			}
			body, _ := json.Marshal(ev.Message)
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			req, err := http.NewRequestWithContext(cctx, http.MethodPost, url, bytes.NewReader(body))
			if err == nil {
				req.Header.Set("Content-Type", "application/json")
				var resp *http.Response
				if resp, err = client.Do(req); err == nil {
					resp.Body.Close()
					if resp.StatusCode >= 300 {
						log.Warn("sandbox webhook refused", "url", url, "status", resp.StatusCode, "id", ev.Message.ID)
					}
				}
			}
			cancel()
			if err != nil && ctx.Err() == nil {
				log.Warn("sandbox webhook failed", "url", url, "err", err, "id", ev.Message.ID)
			}
			if ctx.Err() != nil {
				break
			}
		}
		stop()
		if s.closed.Load() {
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}
