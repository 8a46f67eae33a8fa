// Command sandboxbench measures a fake SMTP server the way a tester uses it: fill it with
// messages, then read its resident memory, the latency of a search and the time of the list
// API the UI calls. It drives Postamt's sandbox and Mailpit through their own HTTP APIs, so
// the two are measured the same way (scripts/bench.sh --sandbox runs it for both).
//
//	sandboxbench -kind postamt|mailpit -smtp 127.0.0.1:1025 -http http://127.0.0.1:8025 -pid PID \
//	    -steps 10000,100000 -c 50 -size 10240 -out result.json
//
// Messages carry words from a fixed vocabulary with a skewed distribution, so that a search
// term matches a known small share of the messages, as real searches do.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/smtp"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type step struct {
	Messages      int     `json:"messages"`
	FillSeconds   float64 `json:"fill_seconds"`
	FillRate      float64 `json:"fill_msgs_per_sec"`
	RSSMiB        float64 `json:"rss_mib"`
	SearchP50ms   float64 `json:"search_p50_ms"`
	SearchP90ms   float64 `json:"search_p90_ms"`
	SearchHits    float64 `json:"search_median_hits"`
	ListP50ms     float64 `json:"list_p50_ms"`
	SenderP50ms   float64 `json:"from_search_p50_ms"`
	Errors        int64   `json:"send_errors"`
	StoredAtCheck int     `json:"stored"`
}

type result struct {
	Kind  string `json:"kind"`
	Steps []step `json:"steps"`
}

const vocab = 20000

func word(i int) string { return "w" + strconv.FormatInt(int64(i)*7919%1000003, 36) }

// pick draws a word index with a skewed (roughly Zipf) distribution.
func pick(r *rand.Rand) int {
	x := r.Float64()
	return int(float64(vocab) * x * x * x)
}

func message(r *rand.Rand, n, size int) (from, to string, body []byte) {
	from = fmt.Sprintf("sender%d@app%d.test", r.IntN(1000), r.IntN(10))
	to = fmt.Sprintf("user%d@customer.test", r.IntN(5000))
	var b strings.Builder
	fmt.Fprintf(&b, "From: %s\r\nTo: %s\r\nSubject: %s %s %s order %d\r\nMessage-ID: <%d.%d@bench.test>\r\nDate: %s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
		from, to, word(pick(r)), word(pick(r)), word(pick(r)), n, n, r.Int64(), time.Now().Format(time.RFC1123Z))
	line := 0
	for b.Len() < size {
		b.WriteString(word(pick(r)))
		line++
		if line%12 == 0 {
			b.WriteString("\r\n")
		} else {
			b.WriteByte(' ')
		}
	}
	b.WriteString("\r\n")
	return from, to, []byte(b.String())
}

func fill(addr string, start, count, conns, size int) (int64, time.Duration) {
	var next atomic.Int64
	next.Store(int64(start))
	end := int64(start + count)
	var errs atomic.Int64
	var wg sync.WaitGroup
	t0 := time.Now()
	for w := 0; w < conns; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), uint64(start)))
			var c *smtp.Client
			for {
				n := next.Add(1) - 1
				if n >= end {
					break
				}
				if c == nil {
					var err error
					if c, err = smtp.Dial(addr); err != nil {
						errs.Add(1)
						time.Sleep(100 * time.Millisecond)
						continue
					}
					c.Hello("bench.test")
				}
				from, to, body := message(r, int(n), size)
				err := c.Mail(from)
				if err == nil {
					err = c.Rcpt(to)
				}
				if err == nil {
					var wc io.WriteCloser
					if wc, err = c.Data(); err == nil {
						wc.Write(body)
						err = wc.Close()
					}
				}
				if err != nil {
					errs.Add(1)
					c.Close()
					c = nil
				}
			}
			if c != nil {
				c.Quit()
			}
		}(w)
	}
	wg.Wait()
	return errs.Load(), time.Since(t0)
}

type server struct {
	kind, base string
	client     *http.Client
}

func (s *server) getJSON(path string, v any) (time.Duration, error) {
	t0 := time.Now()
	resp, err := s.client.Get(s.base + path)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	took := time.Since(t0)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != 200 {
		return 0, fmt.Errorf("GET %s: %s: %s", path, resp.Status, b)
	}
	return took, json.Unmarshal(b, v)
}

func (s *server) count() (int, error) {
	var v struct {
		Total int `json:"total"`
	}
	_, err := s.getJSON("/api/v1/messages?limit=1", &v)
	return v.Total, err
}

func (s *server) search(q string) (time.Duration, int, error) {
	var v struct {
		Total         int `json:"total"`
		MessagesCount int `json:"messages_count"`
	}
	path := "/api/v1/messages?limit=50&query=" + url.QueryEscape(q)
	if s.kind == "mailpit" {
		path = "/api/v1/search?limit=50&query=" + url.QueryEscape(q)
	}
	d, err := s.getJSON(path, &v)
	hits := v.Total
	if s.kind == "mailpit" {
		hits = v.MessagesCount
	}
	return d, hits, err
}

func rssMiB(pid int) float64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.Fields(v)[0])
			return float64(kb) / 1024
		}
	}
	return 0
}

func pct(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[int(p*float64(len(s)-1)+0.5)]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func main() {
	kind := flag.String("kind", "postamt", "postamt or mailpit (which search API to call)")
	smtpAddr := flag.String("smtp", "127.0.0.1:1025", "SMTP address")
	base := flag.String("http", "http://127.0.0.1:8025", "HTTP base URL")
	pid := flag.Int("pid", 0, "server process ID, for its resident memory")
	steps := flag.String("steps", "10000,100000", "message counts at which to measure")
	conns := flag.Int("c", 50, "SMTP connections while filling")
	size := flag.Int("size", 10240, "message size in bytes")
	queries := flag.Int("queries", 40, "searches per measurement")
	out := flag.String("out", "", "JSON result file (default stdout)")
	settle := flag.Duration("settle", 3*time.Second, "pause before reading memory")
	flag.Parse()

	s := &server{kind: *kind, base: strings.TrimRight(*base, "/"), client: &http.Client{Timeout: 2 * time.Minute}}
	res := result{Kind: *kind}
	sent := 0
	for _, f := range strings.Split(*steps, ",") {
		target, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || target <= sent {
			fmt.Fprintf(os.Stderr, "sandboxbench: bad step %q\n", f)
			os.Exit(2)
		}
		st := step{Messages: target}
		errs, took := fill(*smtpAddr, sent, target-sent, *conns, *size)
		st.Errors = errs
		// Stored, not only accepted: wait until the API counts them all (bounded).
		deadline := time.Now().Add(15 * time.Minute)
		for {
			n, err := s.count()
			if err == nil && n >= target-int(errs) {
				st.StoredAtCheck = n
				break
			}
			if time.Now().After(deadline) {
				fmt.Fprintf(os.Stderr, "sandboxbench: only %d of %d stored after 15 minutes\n", n, target)
				st.StoredAtCheck = n
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		fillTook := took
		st.FillSeconds = fillTook.Seconds()
		st.FillRate = float64(target-sent) / fillTook.Seconds()
		sent = target
		time.Sleep(*settle)
		st.RSSMiB = rssMiB(*pid)

		r := rand.New(rand.NewPCG(42, uint64(target)))
		var lat, hits, fromLat, list []float64
		for i := 0; i < *queries; i++ {
			// A mid-frequency word: present in a few percent of the messages.
			q := word(vocab/4 + r.IntN(vocab/2))
			d, h, err := s.search(q)
			if err != nil {
				fmt.Fprintln(os.Stderr, "sandboxbench:", err)
				os.Exit(1)
			}
			lat, hits = append(lat, ms(d)), append(hits, float64(h))
			d, _, err = s.search(fmt.Sprintf("from:sender%d@app%d.test", r.IntN(1000), r.IntN(10)))
			if err == nil {
				fromLat = append(fromLat, ms(d))
			}
			var v any
			if d, err := s.getJSON("/api/v1/messages?limit=50", &v); err == nil {
				list = append(list, ms(d))
			}
		}
		st.SearchP50ms, st.SearchP90ms, st.SearchHits = pct(lat, .5), pct(lat, .9), pct(hits, .5)
		st.SenderP50ms, st.ListP50ms = pct(fromLat, .5), pct(list, .5)
		fmt.Fprintf(os.Stderr, "sandboxbench %s: %d messages: fill %.0f msg/s, RSS %.1f MiB, search p50 %.1f ms p90 %.1f ms (median hits %.0f), from: p50 %.1f ms, list p50 %.1f ms, send errors %d\n",
			*kind, target, st.FillRate, st.RSSMiB, st.SearchP50ms, st.SearchP90ms, st.SearchHits, st.SenderP50ms, st.ListP50ms, st.Errors)
		res.Steps = append(res.Steps, st)
	}
	b, _ := json.MarshalIndent(res, "", "  ")
	if *out == "" {
		os.Stdout.Write(append(b, '\n'))
		return
	}
	if err := os.WriteFile(*out, append(b, '\n'), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
