package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/postamt/postamt/internal/queue"
)

// ErrNotRunning means no server answers on the data directory's socket.
var ErrNotRunning = errors.New("the server is not running (no admin socket answers)")

// Client talks to a running server's admin API over its unix socket.
type Client struct {
	http  *http.Client
	token string
}

// APIError is an error answer of the API.
type APIError struct {
	Status int
	Msg    string
}

func (e *APIError) Error() string { return e.Msg }

// NewClient prepares a client for the server using dataDir. It fails with ErrNotRunning when the
// socket is missing; a socket that exists but does not answer is found out on the first call.
func NewClient(dataDir string) (*Client, error) {
	sock := filepath.Join(dataDir, SocketName)
	tok, err := ReadToken(filepath.Join(dataDir, TokenName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotRunning
	}
	if err != nil {
		return nil, err
	}
	d := net.Dialer{Timeout: 5 * time.Second}
	return &Client{token: tok, http: &http.Client{
		Timeout: 5 * time.Minute,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			addr, done, err := socketAddr(sock)
			if errors.Is(err, fs.ErrNotExist) {
				return nil, ErrNotRunning
			}
			if err != nil {
				return nil, err
			}
			defer done()
			c, err := d.DialContext(ctx, "unix", addr)
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
				return nil, ErrNotRunning
			}
			return c, err
		}},
	}}, nil
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://postamt"+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if errors.Is(err, ErrNotRunning) {
			return ErrNotRunning
		}
		return fmt.Errorf("admin API: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return fmt.Errorf("admin API: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e ErrorResponse
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(data))
		}
		return &APIError{Status: resp.StatusCode, Msg: e.Error}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("admin API: bad answer: %w", err)
		}
	}
	return nil
}

// Ping checks that the server answers and accepts the token.
func (c *Client) Ping(ctx context.Context) error {
	return c.do(ctx, http.MethodGet, "/v1/ping", nil, nil)
}

// List returns the queue entries matching f, at most limit of them (0 for all); more reports
// that there are others.
func (c *Client) List(ctx context.Context, f queue.Filter, limit int) (es []queue.Entry, more bool, err error) {
	v := url.Values{"limit": {strconv.Itoa(limit)}}
	for k, s := range map[string]string{"id": f.ID, "from": f.From, "to": f.To, "domain": f.Domain, "state": f.State} {
		if s != "" {
			v.Set(k, s)
		}
	}
	var out ListResponse
	err = c.do(ctx, http.MethodGet, "/v1/queue?"+v.Encode(), nil, &out)
	return out.Entries, out.Truncated, err
}

// Show returns one message.
func (c *Client) Show(ctx context.Context, id string) (*queue.Message, error) {
	var m queue.Message
	if err := c.do(ctx, http.MethodGet, "/v1/queue/"+url.PathEscape(id), nil, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// Retry reschedules one message now.
func (c *Client) Retry(ctx context.Context, id string) (int, error) {
	var out CountResponse
	err := c.do(ctx, http.MethodPost, "/v1/queue/"+url.PathEscape(id)+"/retry", nil, &out)
	return out.Recipients, err
}

// RetryAll reschedules every message that is not held.
func (c *Client) RetryAll(ctx context.Context) (int, error) {
	var out CountResponse
	err := c.do(ctx, http.MethodPost, "/v1/queue/retry", nil, &out)
	return out.Recipients, err
}

// Hold stops a message's delivery until Release.
func (c *Client) Hold(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodPost, "/v1/queue/"+url.PathEscape(id)+"/hold", nil, nil)
}

// Release lets a held message be delivered again.
func (c *Client) Release(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodPost, "/v1/queue/"+url.PathEscape(id)+"/release", nil, nil)
}

// Delete removes a message without a DSN.
func (c *Client) Delete(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/v1/queue/"+url.PathEscape(id), nil, nil)
}

// Bounce returns a message to its sender with reason.
func (c *Client) Bounce(ctx context.Context, id, reason string) (int, error) {
	var out CountResponse
	err := c.do(ctx, http.MethodPost, "/v1/queue/"+url.PathEscape(id)+"/bounce", BounceRequest{Reason: reason}, &out)
	return out.Recipients, err
}
