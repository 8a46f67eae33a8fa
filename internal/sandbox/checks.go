package sandbox

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/html"
)

// Report is what a tester wants to know about a message before a bulk send.
type Report struct {
	Size     int64     `json:"size"`
	Problems []Problem `json:"problems"`
	Links    []Link    `json:"links"`
	// Auth holds SPF, DKIM and DMARC verdicts as a receiver would see them, when an
	// Authenticator is configured; AuthNote says why not otherwise.
	Auth     []AuthVerdict `json:"auth"`
	AuthNote string        `json:"auth_note,omitempty"`
}

// Problem is one finding, with the clients it matters for.
type Problem struct {
	Severity string `json:"severity"` // warning, error
	Text     string `json:"text"`
}

// Link is a URL found in the message; Status is filled only by CheckLinks.
type Link struct {
	URL    string `json:"url"`
	Status int    `json:"status,omitempty"`
	Error  string `json:"error,omitempty"`
}

// AuthVerdict is one authentication method's result (spf=pass and so on).
type AuthVerdict struct {
	Method string `json:"method"` // spf, dkim, dmarc
	Result string `json:"result"` // pass, fail, none, ...
	Detail string `json:"detail,omitempty"`
}

// Authenticator verifies a captured message as a receiving server would. The sandbox keeps
// this seam so that internal/mailauth can plug in without the store knowing about DNS.
type Authenticator interface {
	Verify(ctx context.Context, raw []byte, env Envelope) []AuthVerdict
}

var urlRe = regexp.MustCompile(`https?://[^\s<>"'()]+`)

// gmailClip is the size of HTML above which Gmail cuts a message off behind a link.
const gmailClip = 102 << 10

// Check inspects a parsed message. The list is short on purpose: each item is something that
// really breaks in common clients, not a style opinion.
func Check(p *Parsed, size int64) *Report {
	r := &Report{Size: size, Problems: []Problem{}, Links: []Link{}, Auth: []AuthVerdict{}}
	add := func(sev, format string, args ...any) {
		r.Problems = append(r.Problems, Problem{Severity: sev, Text: fmt.Sprintf(format, args...)})
	}
	seen := map[string]bool{}
	addLink := func(u string) {
		u = strings.TrimRight(u, ".,;:!?")
		if u != "" && !seen[u] && len(r.Links) < 500 {
			seen[u] = true
			r.Links = append(r.Links, Link{URL: u})
		}
	}
	for _, pr := range p.Problems {
		add("error", "MIME: %s", pr)
	}
	if p.HTML == "" && p.Text == "" {
		add("error", "The message has neither a text nor an HTML part.")
	}
	if p.HTML != "" && strings.TrimSpace(p.Text) == "" {
		add("warning", "HTML without a plain-text alternative: some clients show nothing useful, and spam filters score it.")
	}
	if p.Subject == "" {
		add("warning", "No Subject.")
	}
	if p.MessageID == "" {
		add("warning", "No Message-ID header; many receivers add one or score the message as spam.")
	}
	if p.HTML != "" {
		checkHTML(p.HTML, add, addLink)
		if len(p.HTML) > gmailClip {
			add("warning", "The HTML is %d KB; Gmail clips messages above 102 KB behind a \"View entire message\" link.", len(p.HTML)>>10)
		}
	}
	for _, u := range urlRe.FindAllString(p.Text, -1) {
		addLink(u)
	}
	if size > 10<<20 {
		add("warning", "The message is %.1f MB; many servers refuse messages over 10 MB.", float64(size)/(1<<20))
	}
	return r
}

var (
	flexGridRe = regexp.MustCompile(`(?i)display\s*:\s*(inline-)?(flex|grid)`)
	positionRe = regexp.MustCompile(`(?i)position\s*:\s*(absolute|fixed|sticky)`)
)

func checkHTML(doc string, add func(sev, format string, args ...any), addLink func(string)) {
	z := html.NewTokenizer(strings.NewReader(doc))
	var noAlt, scripts, forms, links, iframes int
	var css strings.Builder
	inStyle := false
	for i := 0; i < 200000; i++ {
		tt := z.Next()
		if tt == html.ErrorToken {
			break
		}
		if tt == html.TextToken && inStyle {
			css.Write(z.Text())
			continue
		}
		if tt != html.StartTagToken && tt != html.SelfClosingTagToken {
			if tt == html.EndTagToken {
				inStyle = false
			}
			continue
		}
		name, hasAttr := z.TagName()
		attrs := map[string]string{}
		for hasAttr {
			var k, v []byte
			k, v, hasAttr = z.TagAttr()
			attrs[string(k)] = string(v)
		}
		if s, ok := attrs["style"]; ok {
			css.WriteString(s + ";")
		}
		switch string(name) {
		case "img":
			if _, ok := attrs["alt"]; !ok {
				noAlt++
			}
		case "script":
			scripts++
		case "form":
			forms++
		case "iframe", "embed", "object":
			iframes++
		case "link":
			if strings.EqualFold(attrs["rel"], "stylesheet") {
				links++
			}
		case "style":
			inStyle = tt == html.StartTagToken
		case "a":
			if h := attrs["href"]; strings.HasPrefix(h, "http://") || strings.HasPrefix(h, "https://") {
				addLink(h)
			}
		}
	}
	if noAlt > 0 {
		add("warning", "%d image(s) without alt text: shown as blank boxes while images are blocked, and unreadable to screen readers.", noAlt)
	}
	if scripts > 0 {
		add("error", "<script> elements: every mail client removes them, and spam filters score them.")
	}
	if forms > 0 {
		add("warning", "<form> elements: Gmail and Outlook disable forms.")
	}
	if iframes > 0 {
		add("error", "<iframe>, <embed> or <object>: mail clients do not show them.")
	}
	if links > 0 {
		add("warning", "External style sheets (<link rel=stylesheet>): Gmail and Outlook ignore them; inline the CSS.")
	}
	c := css.String()
	if flexGridRe.MatchString(c) {
		add("warning", "CSS flexbox or grid: Outlook for Windows (Word engine) ignores them; use tables for layout.")
	}
	if positionRe.MatchString(c) {
		add("warning", "CSS position absolute/fixed/sticky: removed by Gmail and Outlook.")
	}
}

// CheckLinks asks each link's server for its status (HEAD, then GET when HEAD is refused),
// eight at a time, each bounded by timeout. It runs only when a user asks: a sandbox must not
// call URLs in captured mail on its own (they may be one-time tokens).
func CheckLinks(ctx context.Context, client *http.Client, links []Link, timeout time.Duration) {
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i := range links {
		if i >= 100 {
			links[i].Error = "not checked: more than 100 links"
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func(l *Link) {
			defer wg.Done()
			defer func() { <-sem }()
			for _, method := range []string{http.MethodHead, http.MethodGet} {
				cctx, cancel := context.WithTimeout(ctx, timeout)
				req, err := http.NewRequestWithContext(cctx, method, l.URL, nil)
				if err != nil {
					cancel()
					l.Error = err.Error()
					return
				}
				resp, err := client.Do(req)
				cancel()
				if err != nil {
					l.Error = err.Error()
					return
				}
				resp.Body.Close()
				l.Status, l.Error = resp.StatusCode, ""
				if resp.StatusCode != http.StatusMethodNotAllowed && resp.StatusCode != http.StatusNotImplemented {
					return
				}
			}
		}(&links[i])
	}
	wg.Wait()
}
