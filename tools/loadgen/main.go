// Command loadgen is the SMTP load generator of the Postamt benchmark harness
// (scripts/bench.sh). It only talks to loopback addresses.
//
// Throughput mode (default): -c connections share -n messages of -size bytes.
// Each connection greets with EHLO once and then runs back-to-back
// transactions; MAIL FROM, every RCPT TO and DATA go out in one write
// (ESMTP PIPELINING, RFC 2920) when the server advertises it, the body in a
// second write after the 354. The latency measured per message is from the
// moment the write of the body including "\r\n.\r\n" returned to the moment
// the final reply was read.
//
// Idle mode (-idle N): opens N connections, reads the greeting, sends EHLO,
// then holds all of them open for -hold and reports how many were greeted,
// refused (421 greeting) or failed.
//
// Everything is bounded: -n messages at most, at most -deadline of wall time,
// and -timeout for every single read or write.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

type config struct {
	addr     string
	conns    int
	n        int
	size     int
	from     string
	to       []string
	timeout  time.Duration
	deadline time.Duration
	helo     string
	jsonOut  bool
	idle     int
	hold     time.Duration
	dialPar  int
	ready    string
}

// Result is the machine-readable output (-json).
type Result struct {
	Mode             string         `json:"mode"`
	Addr             string         `json:"addr"`
	Connections      int            `json:"connections"`
	Requested        int            `json:"requested"`
	SizeBytes        int            `json:"size_bytes"`
	Recipients       int            `json:"recipients_per_message"`
	Pipelining       bool           `json:"pipelining"`
	Attempted        int64          `json:"attempted"`
	Accepted         int64          `json:"accepted"`
	Errors           map[string]int `json:"errors"`
	ErrorTotal       int            `json:"error_total"`
	WallSeconds      float64        `json:"wall_seconds"`
	MsgsPerSec       float64        `json:"msgs_per_sec"`
	LatencyP50ms     float64        `json:"latency_p50_ms"`
	LatencyP90ms     float64        `json:"latency_p90_ms"`
	LatencyP99ms     float64        `json:"latency_p99_ms"`
	LatencyMaxms     float64        `json:"latency_max_ms"`
	LatencyMeanms    float64        `json:"latency_mean_ms"`
	StartUnixNano    int64          `json:"start_unix_nano"`
	EndUnixNano      int64          `json:"end_unix_nano"`
	DeadlineHit      bool           `json:"deadline_hit"`
	FirstErrorSample string         `json:"first_error_sample,omitempty"`
	ClientCPUSeconds float64        `json:"client_cpu_s"`

	// idle mode
	Idle              int     `json:"idle_requested,omitempty"`
	Greeted           int64   `json:"greeted"`
	Refused421        int64   `json:"refused_421"`
	Failed            int64   `json:"failed"`
	DroppedDuringHold int64   `json:"dropped_during_hold"`
	HoldSeconds       float64 `json:"hold_seconds,omitempty"`
	EstablishSeconds  float64 `json:"establish_seconds,omitempty"`
	NofileLimit       uint64  `json:"nofile_limit,omitempty"`
}

func main() {
	var cfg config
	var to listFlag
	flag.StringVar(&cfg.addr, "addr", "127.0.0.1:2525", "server HOST:PORT (loopback only)")
	flag.IntVar(&cfg.conns, "c", 10, "concurrent connections")
	flag.IntVar(&cfg.n, "n", 1000, "messages to send in total")
	flag.IntVar(&cfg.size, "size", 10240, "message size in bytes (headers + body)")
	flag.StringVar(&cfg.from, "from", "loadgen@client.bench.test", "envelope sender")
	flag.Var(&to, "to", "recipient (repeat the flag or give a comma list); default user@bench.test")
	flag.DurationVar(&cfg.timeout, "timeout", 60*time.Second, "timeout for each read or write")
	flag.DurationVar(&cfg.deadline, "deadline", 10*time.Minute, "hard limit for the whole run")
	flag.StringVar(&cfg.helo, "helo", "loadgen.bench.test", "EHLO name")
	flag.BoolVar(&cfg.jsonOut, "json", false, "print the result as JSON")
	flag.IntVar(&cfg.idle, "idle", 0, "idle mode: open this many connections, EHLO, hold them")
	flag.DurationVar(&cfg.hold, "hold", 20*time.Second, "idle mode: how long to hold the connections")
	flag.IntVar(&cfg.dialPar, "dial-parallel", 64, "idle mode: connection attempts in flight at once")
	flag.StringVar(&cfg.ready, "ready-file", "", "idle mode: create this file once all connections are set up (the hold starts)")
	flag.Parse()
	cfg.to = to
	if len(cfg.to) == 0 {
		cfg.to = []string{"user@bench.test"}
	}
	if err := checkLoopback(cfg.addr); err != nil {
		fatal(err)
	}
	if cfg.conns < 1 || cfg.conns > 10000 || cfg.n < 0 || cfg.n > 10_000_000 || cfg.size < 512 || cfg.size > 100<<20 {
		fatal(errors.New("flags out of range: 1<=c<=10000, 0<=n<=10000000, 512<=size<=100MiB"))
	}
	if cfg.idle < 0 || cfg.idle > 100000 {
		fatal(errors.New("-idle out of range (0..100000)"))
	}
	nofile := raiseNofile()

	var res Result
	if cfg.idle > 0 {
		res = runIdle(cfg)
		res.NofileLimit = nofile
	} else {
		res = runLoad(cfg)
	}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		res.ClientCPUSeconds = float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
	}
	if cfg.jsonOut {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(res)
	} else {
		printHuman(res)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "loadgen:", err)
	os.Exit(2)
}

// checkLoopback refuses every address that is not on the loopback network.
func checkLoopback(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("bad -addr %q: %v", addr, err)
	}
	if _, err := strconv.Atoi(port); err != nil {
		return fmt.Errorf("bad port in -addr %q", addr)
	}
	var ips []net.IP
	if ip := net.ParseIP(host); ip != nil {
		ips = []net.IP{ip}
	} else if host == "localhost" {
		ips = []net.IP{net.IPv4(127, 0, 0, 1)}
	} else {
		return fmt.Errorf("refusing %q: give a loopback IP literal (127.0.0.0/8 or ::1) or localhost", host)
	}
	for _, ip := range ips {
		if !ip.IsLoopback() {
			return fmt.Errorf("refusing %s: only loopback addresses are allowed", ip)
		}
	}
	return nil
}

func raiseNofile() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
		_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
	return rl.Cur
}

// ---------------------------------------------------------------- protocol

type conn struct {
	c    net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
	to   time.Duration
	hard time.Time // the run's deadline: no read or write waits past it
}

func (c *conn) dl() time.Time {
	t := time.Now().Add(c.to)
	if !c.hard.IsZero() && c.hard.Before(t) {
		return c.hard
	}
	return t
}

type reply struct {
	code  int
	lines []string
}

func (r reply) String() string { return strconv.Itoa(r.code) + " " + strings.Join(r.lines, " / ") }

var errProto = errors.New("malformed reply")

func (c *conn) readReply() (reply, error) {
	var rep reply
	for i := 0; i < 1000; i++ { // bounded: no server sends 1000 continuation lines
		_ = c.c.SetReadDeadline(c.dl())
		line, err := c.r.ReadString('\n')
		if err != nil {
			return rep, err
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 3 {
			return rep, fmt.Errorf("%w: %q", errProto, line)
		}
		code, err := strconv.Atoi(line[:3])
		if err != nil {
			return rep, fmt.Errorf("%w: %q", errProto, line)
		}
		rep.code = code
		if len(line) > 4 {
			rep.lines = append(rep.lines, line[4:])
		} else {
			rep.lines = append(rep.lines, "")
		}
		if len(line) == 3 || line[3] == ' ' {
			return rep, nil
		}
		if line[3] != '-' {
			return rep, fmt.Errorf("%w: %q", errProto, line)
		}
	}
	return rep, fmt.Errorf("%w: too many lines", errProto)
}

func (c *conn) flush() error {
	_ = c.c.SetWriteDeadline(c.dl())
	return c.w.Flush()
}

func dial(ctx context.Context, addr string, to time.Duration) (*conn, error) {
	d := net.Dialer{Timeout: to}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c := &conn{c: nc, r: bufio.NewReaderSize(nc, 4096), w: bufio.NewWriterSize(nc, 16384), to: to}
	if dl, ok := ctx.Deadline(); ok {
		c.hard = dl
	}
	return c, nil
}

// greet reads the greeting and does EHLO. It returns the greeting reply
// (for 421 detection) and whether PIPELINING is advertised.
func (c *conn) greet(helo string) (reply, bool, error) {
	g, err := c.readReply()
	if err != nil {
		return g, false, err
	}
	if g.code != 220 {
		return g, false, nil
	}
	fmt.Fprintf(c.w, "EHLO %s\r\n", helo)
	if err := c.flush(); err != nil {
		return g, false, err
	}
	e, err := c.readReply()
	if err != nil {
		return g, false, err
	}
	if e.code != 250 {
		return e, false, fmt.Errorf("EHLO refused: %s", e)
	}
	pipe := false
	for _, l := range e.lines[1:] {
		if strings.EqualFold(strings.Fields(l + " x")[0], "PIPELINING") {
			pipe = true
		}
	}
	return g, pipe, nil
}

// ---------------------------------------------------------------- message

var words = strings.Fields(`the quick brown fox jumps over lazy dog mail transfer agent queue
delivery message header body server client connection recipient sender
envelope protocol benchmark throughput latency durable storage spool maildir
postamt postfix relay domain local remote retry bounce status report data`)

// makeBody returns CRLF lines of about 76 characters, at least n bytes in
// total, never a line that starts with "." (so no dot-stuffing is needed,
// which keeps the wire size equal to the message size).
func makeBody(n int, rng *rand.Rand) []byte {
	var b strings.Builder
	b.Grow(n + 100)
	line := make([]byte, 0, 100)
	for b.Len() < n {
		line = line[:0]
		for len(line) < 70 {
			if len(line) > 0 {
				line = append(line, ' ')
			}
			line = append(line, words[rng.Intn(len(words))]...)
		}
		line = append(line, '\r', '\n')
		b.Write(line)
	}
	return []byte(b.String())
}

// message builds one RFC 5322 message of exactly size bytes (when size is
// larger than the headers), ending in CRLF, followed by the ".\r\n"
// terminator, ready to be written after the 354.
func message(size int, from string, to []string, id string, seq int64, body []byte) []byte {
	now := time.Now()
	var h strings.Builder
	fmt.Fprintf(&h, "Date: %s\r\n", now.Format(time.RFC1123Z))
	fmt.Fprintf(&h, "From: Load Generator <%s>\r\n", from)
	fmt.Fprintf(&h, "To: %s\r\n", strings.Join(to, ", "))
	fmt.Fprintf(&h, "Subject: Postamt benchmark message %d\r\n", seq)
	fmt.Fprintf(&h, "Message-ID: <%s.%d@client.bench.test>\r\n", id, seq)
	h.WriteString("MIME-Version: 1.0\r\n")
	h.WriteString("Content-Type: text/plain; charset=us-ascii\r\n")
	h.WriteString("Content-Transfer-Encoding: 7bit\r\n")
	h.WriteString("\r\n")
	hdr := h.String()
	need := size - len(hdr)
	if need < 2 {
		need = 2
	}
	out := make([]byte, 0, len(hdr)+need+3)
	out = append(out, hdr...)
	// take whole lines from the body, then pad the last line to the exact size
	b := body
	for need > 0 {
		i := 0
		for i < len(b) && b[i] != '\n' {
			i++
		}
		l := b[:i+1]
		if need-len(l) < 2 || i+1 >= len(b) {
			// final line: exactly need bytes ending in CRLF
			last := make([]byte, need)
			for k := range last {
				last[k] = 'x'
			}
			copy(last, l[:min(len(l)-2, need-2)])
			last[need-2], last[need-1] = '\r', '\n'
			out = append(out, last...)
			need = 0
			break
		}
		out = append(out, l...)
		need -= len(l)
		b = b[i+1:]
	}
	return append(out, ".\r\n"...)
}

// ---------------------------------------------------------------- load mode

type stats struct {
	mu        sync.Mutex
	lat       []time.Duration
	errs      map[string]int
	firstErr  string
	accepted  atomic.Int64
	attempted atomic.Int64
	pipe      atomic.Int32 // 1 pipelined, 2 lock-step seen
}

func (s *stats) err(key, sample string) {
	s.mu.Lock()
	s.errs[key]++
	if s.firstErr == "" {
		s.firstErr = key + ": " + sample
	}
	s.mu.Unlock()
}

func codeKey(code int) string { return strconv.Itoa(code) }

func netKey(err error) string {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "closed"
	case errors.Is(err, errProto):
		return "protocol"
	default:
		return "io"
	}
}

func runLoad(cfg config) Result {
	ctx, cancel := context.WithTimeout(context.Background(), cfg.deadline)
	defer cancel()
	st := &stats{errs: map[string]int{}, lat: make([]time.Duration, 0, cfg.n)}
	var next atomic.Int64 // messages handed out
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < cfg.conns; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			worker(ctx, cfg, w, &next, st)
		}(w)
	}
	wg.Wait()
	end := time.Now()
	res := Result{
		Mode: "load", Addr: cfg.addr, Connections: cfg.conns, Requested: cfg.n,
		SizeBytes: cfg.size, Recipients: len(cfg.to),
		Pipelining: st.pipe.Load() == 1,
		Attempted:  st.attempted.Load(), Accepted: st.accepted.Load(),
		Errors: st.errs, FirstErrorSample: st.firstErr,
		WallSeconds:   end.Sub(start).Seconds(),
		StartUnixNano: start.UnixNano(), EndUnixNano: end.UnixNano(),
		DeadlineHit: ctx.Err() != nil,
	}
	for _, v := range st.errs {
		res.ErrorTotal += v
	}
	if res.WallSeconds > 0 {
		res.MsgsPerSec = float64(res.Accepted) / res.WallSeconds
	}
	if len(st.lat) > 0 {
		sort.Slice(st.lat, func(i, j int) bool { return st.lat[i] < st.lat[j] })
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		pct := func(p float64) time.Duration {
			i := int(p*float64(len(st.lat))+0.999999) - 1
			if i < 0 {
				i = 0
			}
			if i >= len(st.lat) {
				i = len(st.lat) - 1
			}
			return st.lat[i]
		}
		var sum time.Duration
		for _, d := range st.lat {
			sum += d
		}
		res.LatencyP50ms = ms(pct(0.50))
		res.LatencyP90ms = ms(pct(0.90))
		res.LatencyP99ms = ms(pct(0.99))
		res.LatencyMaxms = ms(st.lat[len(st.lat)-1])
		res.LatencyMeanms = ms(sum / time.Duration(len(st.lat)))
	}
	return res
}

const maxReconnects = 20

func worker(ctx context.Context, cfg config, w int, next *atomic.Int64, st *stats) {
	rng := rand.New(rand.NewSource(int64(w)*7919 + time.Now().UnixNano()))
	body := makeBody(cfg.size+200, rng)
	id := fmt.Sprintf("%x.%d", time.Now().UnixNano(), w)
	var c *conn
	var pipe bool
	reconnects := 0
	defer func() {
		if c != nil {
			fmt.Fprintf(c.w, "QUIT\r\n")
			c.hard = time.Time{}
			c.to = 2 * time.Second
			if c.flush() == nil {
				_, _ = c.readReply()
			}
			c.c.Close()
		}
	}()
	// a local buffer of latencies, merged at the end
	lat := make([]time.Duration, 0, cfg.n/cfg.conns+16)
	defer func() {
		st.mu.Lock()
		st.lat = append(st.lat, lat...)
		st.mu.Unlock()
	}()
	var cmd strings.Builder
	for ctx.Err() == nil {
		if c == nil {
			if reconnects > maxReconnects {
				return
			}
			reconnects++
			var err error
			c, err = dial(ctx, cfg.addr, cfg.timeout)
			if err != nil {
				st.err("connect", err.Error())
				sleepCtx(ctx, 100*time.Millisecond)
				continue
			}
			g, p, err := c.greet(cfg.helo)
			if err != nil || g.code != 220 {
				if err != nil {
					st.err("greeting-"+netKey(err), err.Error())
				} else {
					st.err("greeting-"+codeKey(g.code), g.String())
				}
				c.c.Close()
				c = nil
				sleepCtx(ctx, 100*time.Millisecond)
				continue
			}
			pipe = p
			if pipe {
				st.pipe.CompareAndSwap(0, 1)
			} else {
				st.pipe.Store(2)
			}
		}
		seq := next.Add(1)
		if seq > int64(cfg.n) {
			return
		}
		st.attempted.Add(1)
		msg := message(cfg.size, cfg.from, cfg.to, id, seq, body)
		ok, fatalConn := transaction(c, cfg, pipe, msg, &cmd, st, &lat)
		if ok {
			st.accepted.Add(1)
		}
		if fatalConn {
			c.c.Close()
			c = nil
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// transaction runs one MAIL/RCPT/DATA transaction. It returns whether the
// message got a 2xx after the data, and whether the connection is unusable.
func transaction(c *conn, cfg config, pipe bool, msg []byte, cmd *strings.Builder, st *stats, lat *[]time.Duration) (bool, bool) {
	cmd.Reset()
	fmt.Fprintf(cmd, "MAIL FROM:<%s> SIZE=%d\r\n", cfg.from, len(msg)-3)
	cmds := []string{cmd.String()}
	for _, r := range cfg.to {
		cmds = append(cmds, "RCPT TO:<"+r+">\r\n")
	}
	cmds = append(cmds, "DATA\r\n")

	ioFail := func(what string, err error) (bool, bool) {
		st.err(netKey(err), what+": "+err.Error())
		return false, true
	}
	var replies []reply
	if pipe {
		for _, s := range cmds {
			c.w.WriteString(s)
		}
		if err := c.flush(); err != nil {
			return ioFail("write envelope", err)
		}
		for range cmds {
			r, err := c.readReply()
			if err != nil {
				return ioFail("read envelope reply", err)
			}
			replies = append(replies, r)
		}
	} else {
		for _, s := range cmds {
			c.w.WriteString(s)
			if err := c.flush(); err != nil {
				return ioFail("write command", err)
			}
			r, err := c.readReply()
			if err != nil {
				return ioFail("read reply", err)
			}
			replies = append(replies, r)
			if r.code >= 400 {
				break
			}
		}
	}
	// MAIL
	if replies[0].code/100 != 2 {
		st.err(codeKey(replies[0].code), "MAIL: "+replies[0].String())
		return false, finishFailed(c, pipe, replies)
	}
	okRcpt := 0
	for i := 1; i < len(replies) && i <= len(cfg.to); i++ {
		if replies[i].code/100 == 2 {
			okRcpt++
		} else if okRcpt == 0 && i == len(cfg.to) {
			st.err(codeKey(replies[i].code), "RCPT: "+replies[i].String())
		}
	}
	last := replies[len(replies)-1]
	if len(replies) != len(cmds) || last.code != 354 {
		if okRcpt > 0 {
			st.err(codeKey(last.code), "DATA: "+last.String())
		}
		return false, finishFailed(c, pipe, replies)
	}
	c.w.Write(msg)
	if err := c.flush(); err != nil {
		return ioFail("write data", err)
	}
	t0 := time.Now()
	r, err := c.readReply()
	if err != nil {
		return ioFail("read final reply", err)
	}
	*lat = append(*lat, time.Since(t0))
	if r.code/100 != 2 {
		st.err(codeKey(r.code), "end of data: "+r.String())
		return false, r.code == 421
	}
	return true, false
}

// finishFailed leaves the connection in a clean state after a failed
// envelope: RSET, or give up the connection after a 421.
func finishFailed(c *conn, pipe bool, replies []reply) bool {
	for _, r := range replies {
		if r.code == 421 {
			return true
		}
	}
	if last := replies[len(replies)-1]; last.code == 354 {
		// DATA was accepted without a recipient: send an empty message
		c.w.WriteString(".\r\n")
		if c.flush() != nil {
			return true
		}
		if _, err := c.readReply(); err != nil {
			return true
		}
	}
	c.w.WriteString("RSET\r\n")
	if c.flush() != nil {
		return true
	}
	r, err := c.readReply()
	return err != nil || r.code != 250
}

// ---------------------------------------------------------------- idle mode

func runIdle(cfg config) Result {
	ctx, cancel := context.WithTimeout(context.Background(), cfg.deadline)
	defer cancel()
	var greeted, refused, failed, dropped atomic.Int64
	var firstErr atomic.Value
	conns := make([]*conn, cfg.idle)
	sem := make(chan struct{}, max(1, cfg.dialPar))
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < cfg.idle && ctx.Err() == nil; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := dial(ctx, cfg.addr, cfg.timeout)
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, "connect: "+err.Error())
				return
			}
			g, _, err := c.greet(cfg.helo)
			switch {
			case err != nil:
				failed.Add(1)
				firstErr.CompareAndSwap(nil, "greet: "+err.Error())
				c.c.Close()
			case g.code == 421:
				refused.Add(1)
				c.c.Close()
			case g.code != 220:
				failed.Add(1)
				firstErr.CompareAndSwap(nil, "greeting: "+g.String())
				c.c.Close()
			default:
				greeted.Add(1)
				conns[i] = c
			}
		}(i)
	}
	wg.Wait()
	established := time.Since(start)
	if cfg.ready != "" {
		_ = os.WriteFile(cfg.ready, []byte(strconv.FormatInt(greeted.Load(), 10)+"\n"), 0o644)
	}
	fmt.Fprintf(os.Stderr, "loadgen: holding %d idle connections for %s (refused %d, failed %d)\n",
		greeted.Load(), cfg.hold, refused.Load(), failed.Load())
	// watch every held connection: a read that returns before the hold
	// ends means the server dropped it.
	holdEnd := time.Now().Add(cfg.hold)
	if dl, ok := ctx.Deadline(); ok && dl.Before(holdEnd) {
		holdEnd = dl
	}
	var wg2 sync.WaitGroup
	for _, c := range conns {
		if c == nil {
			continue
		}
		wg2.Add(1)
		go func(c *conn) {
			defer wg2.Done()
			_ = c.c.SetReadDeadline(holdEnd)
			var b [512]byte
			_, err := c.c.Read(b[:])
			var ne net.Error
			if err == nil || !(errors.As(err, &ne) && ne.Timeout()) {
				dropped.Add(1)
			}
		}(c)
	}
	wg2.Wait()
	for _, c := range conns {
		if c != nil {
			c.c.Close()
		}
	}
	res := Result{
		Mode: "idle", Addr: cfg.addr, Idle: cfg.idle, Errors: map[string]int{},
		Greeted: greeted.Load(), Refused421: refused.Load(), Failed: failed.Load(),
		DroppedDuringHold: dropped.Load(), HoldSeconds: cfg.hold.Seconds(),
		EstablishSeconds: established.Seconds(), WallSeconds: time.Since(start).Seconds(),
		StartUnixNano: start.UnixNano(), EndUnixNano: time.Now().UnixNano(),
		DeadlineHit: ctx.Err() != nil,
	}
	if v, ok := firstErr.Load().(string); ok {
		res.FirstErrorSample = v
	}
	return res
}

// ---------------------------------------------------------------- output

func printHuman(r Result) {
	if r.Mode == "idle" {
		fmt.Printf("idle connections to %s: requested %d, greeted %d, refused (421) %d, failed %d, dropped during hold %d\n",
			r.Addr, r.Idle, r.Greeted, r.Refused421, r.Failed, r.DroppedDuringHold)
		fmt.Printf("established in %.2fs, held %.0fs, RLIMIT_NOFILE %d\n", r.EstablishSeconds, r.HoldSeconds, r.NofileLimit)
		if r.FirstErrorSample != "" {
			fmt.Printf("first error: %s\n", r.FirstErrorSample)
		}
		return
	}
	fmt.Printf("%s: %d connections, %d x %d-byte messages, %d recipient(s), pipelining %v\n",
		r.Addr, r.Connections, r.Requested, r.SizeBytes, r.Recipients, r.Pipelining)
	fmt.Printf("accepted %d of %d attempted in %.3fs: %.1f msgs/s\n", r.Accepted, r.Attempted, r.WallSeconds, r.MsgsPerSec)
	fmt.Printf("end-of-DATA -> reply latency: p50 %.2fms  p90 %.2fms  p99 %.2fms  max %.2fms  mean %.2fms\n",
		r.LatencyP50ms, r.LatencyP90ms, r.LatencyP99ms, r.LatencyMaxms, r.LatencyMeanms)
	if r.ErrorTotal > 0 {
		keys := make([]string, 0, len(r.Errors))
		for k := range r.Errors {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var parts []string
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s=%d", k, r.Errors[k]))
		}
		fmt.Printf("errors: %d (%s); first: %s\n", r.ErrorTotal, strings.Join(parts, " "), r.FirstErrorSample)
	} else {
		fmt.Println("errors: 0")
	}
	fmt.Printf("load generator CPU: %.2fs\n", r.ClientCPUSeconds)
	if r.DeadlineHit {
		fmt.Println("WARNING: the -deadline was hit; the run is incomplete")
	}
}
