package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
)

// The files one bench run leaves in its output directory (see scripts/bench.sh):
//
//	machine.md                       machine facts, copied to the top
//	runs/<server>-c<C>-r<R>.json     one throughput run (runFile)
//	idle-<server>.json               one idle-connection run (idleFile)
//	fsync-w<W>[-dirsync].json        one fsync measurement (fsyncResult)
//	unavailable/<server>.txt         why a server could not be measured

type loadResult struct {
	Connections   int            `json:"connections"`
	Requested     int            `json:"requested"`
	SizeBytes     int            `json:"size_bytes"`
	Pipelining    bool           `json:"pipelining"`
	Attempted     int64          `json:"attempted"`
	Accepted      int64          `json:"accepted"`
	Errors        map[string]int `json:"errors"`
	ErrorTotal    int            `json:"error_total"`
	WallSeconds   float64        `json:"wall_seconds"`
	MsgsPerSec    float64        `json:"msgs_per_sec"`
	P50           float64        `json:"latency_p50_ms"`
	P99           float64        `json:"latency_p99_ms"`
	Max           float64        `json:"latency_max_ms"`
	StartUnixNano int64          `json:"start_unix_nano"`
	DeadlineHit   bool           `json:"deadline_hit"`
	FirstError    string         `json:"first_error_sample"`
	ClientCPU     float64        `json:"client_cpu_s"`
	// idle mode
	Idle       int   `json:"idle_requested"`
	Greeted    int64 `json:"greeted"`
	Refused421 int64 `json:"refused_421"`
	Failed     int64 `json:"failed"`
	Dropped    int64 `json:"dropped_during_hold"`
}

type runFile struct {
	Server   string          `json:"server"`
	Conns    int             `json:"conns"`
	Round    int             `json:"round"`
	Busy     float64         `json:"machine_busy_cpu_s"`
	Load     loadResult      `json:"load"`
	Proc     *procmonResult  `json:"proc"`
	Delivery *maildirResult  `json:"delivery"`
	Notes    json.RawMessage `json:"notes,omitempty"`
}

type rssSample struct {
	RSSKB int64 `json:"rss_kb"`
	PSSKB int64 `json:"pss_kb"`
	Procs int   `json:"procs"`
}

type idleFile struct {
	Server string     `json:"server"`
	Conns  int        `json:"conns"`
	Before rssSample  `json:"before"`
	During rssSample  `json:"during"`
	Load   loadResult `json:"load"`
}

var serverOrder = []string{"postamt", "postamt-sandbox", "postfix", "mailpit", "smtp-sink"}

var serverTitle = map[string]string{
	"postamt":         "Postamt",
	"postamt-sandbox": "Postamt sandbox",
	"postfix":         "Postfix",
	"mailpit":         "Mailpit",
	"smtp-sink":       "smtp-sink",
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

type agg struct {
	server    string
	conns     int
	runs      []runFile
	accepted  float64 // median msgs/s accepted
	delivered float64 // median msgs/s accepted+delivered (0: not applicable)
	delivOK   bool    // every run delivered everything
	p50, p99  float64
	errors    int
	peakRSS   float64 // MiB, median of the runs' peaks
	peakPSS   float64
	cpu       float64 // s, median
	cpuPerMsg float64 // ms CPU per accepted message, median
}

func cmdReport(args []string) error {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	dir := fs.String("dir", "bench/out", "output directory of the bench run")
	out := fs.String("out", "", "markdown file (default DIR/results.md)")
	chart := fs.String("chart-data", "", "TSV for tools/benchchart (default DIR/chart.tsv)")
	mode := fs.String("mode", "", "quick or full (printed)")
	_ = fs.Parse(args)
	if *out == "" {
		*out = filepath.Join(*dir, "results.md")
	}
	if *chart == "" {
		*chart = filepath.Join(*dir, "chart.tsv")
	}

	files, _ := filepath.Glob(filepath.Join(*dir, "runs", "*.json"))
	groups := map[string]*agg{}
	for _, f := range files {
		var r runFile
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(b, &r); err != nil {
			return fmt.Errorf("%s: %v", f, err)
		}
		k := fmt.Sprintf("%s/%d", r.Server, r.Conns)
		if groups[k] == nil {
			groups[k] = &agg{server: r.Server, conns: r.Conns}
		}
		groups[k].runs = append(groups[k].runs, r)
	}
	if len(groups) == 0 {
		return errors.New("no run files in " + filepath.Join(*dir, "runs"))
	}
	var aggs []*agg
	for _, g := range groups {
		sort.Slice(g.runs, func(i, j int) bool { return g.runs[i].Round < g.runs[j].Round })
		var acc, del, p50, p99, rss, pss, cpu, cpm []float64
		g.delivOK = true
		for _, r := range g.runs {
			acc = append(acc, r.Load.MsgsPerSec)
			p50 = append(p50, r.Load.P50)
			p99 = append(p99, r.Load.P99)
			g.errors += r.Load.ErrorTotal
			if r.Load.Attempted < int64(r.Load.Requested) {
				g.errors += int(int64(r.Load.Requested) - r.Load.Attempted)
			}
			if r.Delivery != nil {
				del = append(del, r.Delivery.DeliveredPerSec)
				if !r.Delivery.Complete {
					g.delivOK = false
				}
			}
			if r.Proc != nil {
				rss = append(rss, float64(r.Proc.PeakRSSKB)/1024)
				pss = append(pss, float64(r.Proc.PeakPSSKB)/1024)
				cpu = append(cpu, r.Proc.CPUSeconds)
				if r.Load.Accepted > 0 {
					cpm = append(cpm, 1000*r.Proc.CPUSeconds/float64(r.Load.Accepted))
				}
			}
		}
		g.accepted, g.p50, g.p99 = median(acc), median(p50), median(p99)
		if len(del) > 0 {
			g.delivered = median(del)
		}
		g.peakRSS, g.peakPSS, g.cpu, g.cpuPerMsg = median(rss), median(pss), median(cpu), median(cpm)
		aggs = append(aggs, g)
	}
	rank := func(s string) int {
		for i, o := range serverOrder {
			if o == s {
				return i
			}
		}
		return len(serverOrder)
	}
	sort.Slice(aggs, func(i, j int) bool {
		if aggs[i].conns != aggs[j].conns {
			return aggs[i].conns < aggs[j].conns
		}
		return rank(aggs[i].server) < rank(aggs[j].server)
	})
	find := func(server string, conns int) *agg { return groups[fmt.Sprintf("%s/%d", server, conns)] }

	var md strings.Builder
	md.WriteString("# Postamt benchmark results\n\n")
	if b, err := os.ReadFile(filepath.Join(*dir, "machine.md")); err == nil {
		md.Write(b)
		md.WriteString("\n")
	}
	first := aggs[0].runs[0].Load
	rounds := 0
	for _, g := range aggs {
		rounds = max(rounds, len(g.runs))
	}
	fmt.Fprintf(&md, "Mode: **%s**. Workload: %d messages of %d bytes per run, one recipient, ESMTP PIPELINING, "+
		"each connection reused for all its messages; every run starts a fresh server with empty storage. "+
		"Rounds: %d, the servers interleaved within each round; "+
		"figures are medians over the rounds (every run is listed at the bottom).\n\n",
		orDash(*mode), first.Requested, first.SizeBytes, rounds)

	ncpu := float64(runtime.NumCPU())
	foreignShare := func(r runFile) float64 {
		if r.Proc == nil || r.Proc.Seconds <= 0 {
			return 0
		}
		return r.Proc.ForeignCPU / (r.Proc.Seconds * ncpu)
	}
	skewed, total := 0, 0
	for _, g := range aggs {
		for _, r := range g.runs {
			total++
			if foreignShare(r) > 0.05 {
				skewed++
			}
		}
	}
	if skewed > 0 {
		fmt.Fprintf(&md, "**Warning: in %d of %d runs other processes on the machine used more than 5%% of its CPU "+
			"(column *other processes* under Every run); those figures are skewed (lower throughput, higher latency). "+
			"Re-run on a quiet machine for clean numbers.**\n\n", skewed, total)
	}

	md.WriteString("## Throughput, latency, resources\n\n")
	md.WriteString("| Server | Conns | msgs/s accepted | msgs/s accepted+delivered | p50 ms | p99 ms | errors | peak RSS MiB | peak PSS MiB | CPU s | CPU ms/msg | Postamt/Postfix | Postamt/smtp-sink | Postamt/Mailpit |\n")
	md.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, g := range aggs {
		deliv := "n/a"
		if g.delivered > 0 || len(g.runs) > 0 && g.runs[0].Delivery != nil {
			deliv = fmt.Sprintf("%.0f", g.delivered)
			if !g.delivOK {
				deliv += " (incomplete)"
			}
		}
		ratio := func(peer string) string {
			if g.server != "postamt" && (g.server != "postamt-sandbox" || peer != "mailpit") {
				return "—"
			}
			p := find(peer, g.conns)
			if p == nil || p.accepted <= 0 {
				return "n/a"
			}
			s := fmt.Sprintf("%.2f", g.accepted/p.accepted)
			if peer == "postfix" && g.delivered > 0 && p.delivered > 0 {
				s += fmt.Sprintf(" (delivered %.2f)", g.delivered/p.delivered)
			}
			return s
		}
		fmt.Fprintf(&md, "| %s | %d | %.0f | %s | %.2f | %.2f | %d | %.1f | %.1f | %.2f | %.3f | %s | %s | %s |\n",
			serverTitle[g.server], g.conns, g.accepted, deliv, g.p50, g.p99, g.errors,
			g.peakRSS, g.peakPSS, g.cpu, g.cpuPerMsg, ratio("postfix"), ratio("smtp-sink"), ratio("mailpit"))
	}
	md.WriteString("\n")

	// servers that could not be measured
	unav, _ := filepath.Glob(filepath.Join(*dir, "unavailable", "*.txt"))
	if len(unav) > 0 {
		md.WriteString("### Not measured\n\n")
		for _, f := range unav {
			b, _ := os.ReadFile(f)
			name := strings.TrimSuffix(filepath.Base(f), ".txt")
			title := serverTitle[name]
			if title == "" {
				title = name
			}
			fmt.Fprintf(&md, "- **%s**: unavailable — %s\n", title, strings.TrimSpace(string(b)))
		}
		md.WriteString("\n")
	}

	md.WriteString("Columns: *msgs/s accepted* = messages that got a 250 after the data ÷ loadgen wall time " +
		"(connect to last reply). *accepted+delivered* = messages found in the Maildir ÷ (first send → ctime of the " +
		"last file in `new/`); n/a for servers that do not deliver. *p50/p99* = end of DATA (`\\r\\n.\\r\\n` written) → final reply. " +
		"*errors* = non-2xx final replies, refused envelopes, I/O errors and messages never attempted, summed over the rounds. " +
		"*peak RSS/PSS* = highest sum over the server's process tree, sampled every 200 ms (PSS splits shared pages among the processes sharing them, so it does not count Postfix's shared libraries once per process). " +
		"*CPU s* = user+system seconds of the process tree from just before the first connection until every message was delivered " +
		"(includes reaped children). Ratio columns compare Postamt's accepted msgs/s with the peer's at the same concurrency; " +
		"Postamt/Postfix also gives the ratio of the delivered rates.\n\n")

	// idle connections
	idles, _ := filepath.Glob(filepath.Join(*dir, "idle-*.json"))
	if len(idles) > 0 {
		md.WriteString("## Idle connections\n\n")
		md.WriteString("| Server | requested | greeted | refused (421) | failed | dropped while held | RSS before MiB | RSS held MiB | KiB per connection (RSS) | KiB per connection (PSS) |\n")
		md.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, f := range idles {
			var r idleFile
			b, err := os.ReadFile(f)
			if err != nil {
				return err
			}
			if err := json.Unmarshal(b, &r); err != nil {
				return fmt.Errorf("%s: %v", f, err)
			}
			per, perP := "n/a", "n/a"
			if r.Load.Greeted > 0 {
				per = fmt.Sprintf("%.1f", float64(r.During.RSSKB-r.Before.RSSKB)/float64(r.Load.Greeted))
				perP = fmt.Sprintf("%.1f", float64(r.During.PSSKB-r.Before.PSSKB)/float64(r.Load.Greeted))
			}
			fmt.Fprintf(&md, "| %s | %d | %d | %d | %d | %d | %.1f | %.1f | %s | %s |\n",
				serverTitle[r.Server], r.Load.Idle, r.Load.Greeted, r.Load.Refused421, r.Load.Failed, r.Load.Dropped,
				float64(r.Before.RSSKB)/1024, float64(r.During.RSSKB)/1024, per, perP)
		}
		md.WriteString("\nPer connection = (RSS while the connections are held − RSS before) ÷ greeted connections; each connection has read the greeting and done EHLO.\n\n")
	}

	// fsync ceiling
	fsyncs, _ := filepath.Glob(filepath.Join(*dir, "fsync-*.json"))
	if len(fsyncs) > 0 {
		md.WriteString("## Disk: durability ceiling\n\n")
		md.WriteString("| writers | what each operation does | files/s | p50 ms | p99 ms |\n|---:|---|---:|---:|---:|\n")
		var rs []fsyncResult
		for _, f := range fsyncs {
			var r fsyncResult
			b, err := os.ReadFile(f)
			if err != nil {
				return err
			}
			if err := json.Unmarshal(b, &r); err != nil {
				return fmt.Errorf("%s: %v", f, err)
			}
			rs = append(rs, r)
		}
		sort.Slice(rs, func(i, j int) bool {
			if rs[i].DirSync != rs[j].DirSync {
				return !rs[i].DirSync
			}
			return rs[i].Writers < rs[j].Writers
		})
		for _, r := range rs {
			what := fmt.Sprintf("create + write %d B + fsync(file)", r.SizeBytes)
			if r.DirSync {
				what += " + fsync(dir)"
			}
			fmt.Fprintf(&md, "| %d | %s | %.0f | %.3f | %.3f |\n", r.Writers, what, r.PerSec, r.P50ms, r.P99ms)
		}
		md.WriteString("\nMeasured in the file system of the data directories. A server that fsyncs every message " +
			"before its 250 cannot accept faster than this for one writer at a time; group commit across connections can go past it.\n\n")
	}

	// every run
	md.WriteString("## Every run\n\n")
	md.WriteString("| Server | Conns | round | accepted | msgs/s | delivered msgs/s | p50 ms | p99 ms | max ms | errors | peak RSS MiB | server CPU s | client CPU s | kernel threads CPU s | other processes CPU s | machine busy CPU s |\n")
	md.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|\n")
	for _, g := range aggs {
		for _, r := range g.runs {
			deliv := "n/a"
			if r.Delivery != nil {
				deliv = fmt.Sprintf("%.0f (%d/%d)", r.Delivery.DeliveredPerSec, r.Delivery.Count, r.Delivery.Want)
			}
			errs := "0"
			if r.Load.ErrorTotal > 0 {
				var ks []string
				for k, v := range r.Load.Errors {
					ks = append(ks, fmt.Sprintf("%s×%d", k, v))
				}
				sort.Strings(ks)
				errs = strings.Join(ks, " ")
			}
			if r.Load.DeadlineHit {
				errs += " (deadline hit)"
			}
			rss, cpu, kern, other := 0.0, 0.0, 0.0, "n/a"
			if r.Proc != nil {
				rss, cpu, kern = float64(r.Proc.PeakRSSKB)/1024, r.Proc.CPUSeconds, r.Proc.KernelCPU
				share := foreignShare(r)
				other = fmt.Sprintf("%.1f (%.0f%%)", r.Proc.ForeignCPU, 100*share)
				if share > 0.05 {
					other += " ⚠"
					if len(r.Proc.ForeignTop) > 0 {
						other += " " + strings.Join(r.Proc.ForeignTop, ", ")
					}
				}
			}
			fmt.Fprintf(&md, "| %s | %d | %d | %d/%d | %.0f | %s | %.2f | %.2f | %.2f | %s | %.1f | %.2f | %.2f | %.2f | %s | %.2f |\n",
				serverTitle[r.Server], r.Conns, r.Round, r.Load.Accepted, r.Load.Requested, r.Load.MsgsPerSec, deliv,
				r.Load.P50, r.Load.P99, r.Load.Max, errs, rss, cpu, r.Load.ClientCPU, kern, other, r.Busy)
		}
	}
	md.WriteString("\n*server CPU s* is the measured process tree; *client CPU s* is the load generator's own; " +
		"*kernel threads* = kernel workers (file system journal, writeback, softirq) during the run, much of it on the server's behalf; " +
		"*other processes* = every other process on the machine outside the bench script, in seconds and as a share of the machine's " +
		"capacity over the run (a lower bound: processes living under 200 ms are missed), i.e. work that competed with the benchmark (⚠ above 5%, with the top names); " +
		"*machine busy* = all CPUs of the machine over the run (/proc/stat).\n\n")
	var firstErrs []string
	for _, g := range aggs {
		for _, r := range g.runs {
			if r.Load.FirstError != "" {
				firstErrs = append(firstErrs, fmt.Sprintf("- %s c=%d round %d: `%s`", serverTitle[r.Server], r.Conns, r.Round, r.Load.FirstError))
			}
		}
	}
	if len(firstErrs) > 0 {
		md.WriteString("First error of each run that had one:\n\n" + strings.Join(firstErrs, "\n") + "\n\n")
	}
	if err := os.WriteFile(*out, []byte(md.String()), 0o644); err != nil {
		return err
	}

	// chart data: series, x, y
	var tsv strings.Builder
	for _, g := range aggs {
		fmt.Fprintf(&tsv, "%s\t%d\t%.1f\n", serverTitle[g.server], g.conns, g.accepted)
	}
	for _, g := range aggs {
		if g.delivered > 0 {
			fmt.Fprintf(&tsv, "%s delivered\t%d\t%.1f\n", serverTitle[g.server], g.conns, g.delivered)
		}
	}
	if err := os.WriteFile(*chart, []byte(tsv.String()), 0o644); err != nil {
		return err
	}
	fmt.Print(md.String())
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}
