// Command benchutil holds the measuring helpers of the benchmark harness
// (scripts/bench.sh). Subcommands:
//
//	procmon      sample a process tree until signalled: peak RSS, CPU seconds
//	rss          print the current RSS/PSS of a process tree once
//	fsync        measure write+fsync rate of small files in a directory
//	maildirwait  wait until a Maildir holds N messages; time of the last one
//	waitport     wait until a loopback TCP port answers with an SMTP greeting
//	report       turn the run files of one bench run into results.md
//	freeport     print N free TCP ports on 127.0.0.1 (high, outside the ephemeral range)
//	quiet        wait (bounded) until the machine's CPUs are nearly idle
//
// Every loop is bounded in count and in time. Only loopback addresses are
// ever dialled.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	args := os.Args[2:]
	var err error
	switch os.Args[1] {
	case "procmon":
		err = cmdProcmon(args)
	case "rss":
		err = cmdRSS(args)
	case "fsync":
		err = cmdFsync(args)
	case "maildirwait":
		err = cmdMaildirWait(args)
	case "waitport":
		err = cmdWaitPort(args)
	case "report":
		err = cmdReport(args)
	case "freeport":
		err = cmdFreePort(args)
	case "quiet":
		err = cmdQuiet(args)
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchutil "+os.Args[1]+":", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: benchutil procmon|rss|fsync|maildirwait|waitport|report|freeport|quiet [flags]")
	os.Exit(2)
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if path == "" || path == "-" {
		_, err = os.Stdout.Write(b)
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// ------------------------------------------------------------ /proc reading

var clkTck = 100.0 // USER_HZ; 100 on every Linux architecture Go supports here

const pageKB = 4 // x86-64 / arm64 default page size in KiB; checked in init

func init() {
	if ps := os.Getpagesize(); ps != 4096 {
		fmt.Fprintln(os.Stderr, "benchutil: page size is not 4 KiB; RSS figures would be wrong")
		os.Exit(2)
	}
}

type procStat struct {
	pid, ppid                    int
	kthread                      bool
	start                        uint64 // clock ticks after boot: with pid, identifies a process
	comm                         string
	utime, stime, cutime, cstime uint64 // clock ticks
	rssPages                     int64
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	// comm is in parentheses and may contain spaces: split at the last ')'
	i := bytes.IndexByte(b, '(')
	j := bytes.LastIndexByte(b, ')')
	if i < 0 || j < i {
		return procStat{}, errors.New("bad stat")
	}
	f := strings.Fields(string(b[j+1:]))
	// f[0] is field 3 (state); field k is f[k-3]
	if len(f) < 22 {
		return procStat{}, errors.New("short stat")
	}
	u := func(k int) uint64 { v, _ := strconv.ParseUint(f[k-3], 10, 64); return v }
	ppid, _ := strconv.Atoi(f[4-3])
	rss, _ := strconv.ParseInt(f[24-3], 10, 64)
	const pfKthread = 0x00200000
	return procStat{pid: pid, ppid: ppid, kthread: u(9)&pfKthread != 0 || pid == 2 || ppid == 2,
		comm: string(b[i+1 : j]), start: u(22),
		utime: u(14), stime: u(15), cutime: u(16), cstime: u(17), rssPages: rss}, nil
}

func allStats() map[int]procStat {
	ents, _ := os.ReadDir("/proc")
	m := make(map[int]procStat, len(ents))
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if s, err := readStat(pid); err == nil {
			m[pid] = s
		}
	}
	return m
}

// tree returns root and all its live descendants.
func tree(root int, all map[int]procStat) []procStat {
	kids := map[int][]int{}
	for _, s := range all {
		kids[s.ppid] = append(kids[s.ppid], s.pid)
	}
	var out []procStat
	seen := map[int]bool{}
	queue := []int{root}
	for len(queue) > 0 && len(out) < 100000 {
		p := queue[0]
		queue = queue[1:]
		if seen[p] {
			continue
		}
		seen[p] = true
		if s, ok := all[p]; ok {
			out = append(out, s)
			queue = append(queue, kids[p]...)
		}
	}
	return out
}

// treeCPU is the CPU time of a process tree in seconds: user+system of every
// live process, plus cutime+cstime of every live process, which the kernel
// adds up for children that have exited and were waited for. A child that
// exited is thus counted in its reaping parent, once; only a child that has
// exited but not yet been reaped at the moment of the sample is missed.
func treeCPU(ps []procStat) (user, sys float64) {
	for _, s := range ps {
		user += float64(s.utime+s.cutime) / clkTck
		sys += float64(s.stime+s.cstime) / clkTck
	}
	return
}

func treeRSSKB(ps []procStat) int64 {
	var kb int64
	for _, s := range ps {
		kb += s.rssPages * pageKB
	}
	return kb
}

// pssKB reads the proportional set size (shared pages divided among the
// processes sharing them) from smaps_rollup.
func pssKB(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "Pss:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				v, _ := strconv.ParseInt(f[1], 10, 64)
				return v
			}
		}
	}
	return 0
}

func statusKB(pid int, key string) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, key+":") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				v, _ := strconv.ParseInt(f[1], 10, 64)
				return v
			}
		}
	}
	return 0
}

func pidFrom(pid int, pidfile string) (int, error) {
	if pid > 0 {
		return pid, nil
	}
	if pidfile == "" {
		return 0, errors.New("need -pid or -pidfile")
	}
	b, err := os.ReadFile(pidfile)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// ------------------------------------------------------------ procmon

type procmonResult struct {
	RootPID         int            `json:"root_pid"`
	RootComm        string         `json:"root_comm"`
	Seconds         float64        `json:"seconds"`
	Samples         int            `json:"samples"`
	IntervalMS      int64          `json:"interval_ms"`
	PeakRSSKB       int64          `json:"peak_rss_kb"`
	PeakPSSKB       int64          `json:"peak_pss_kb"`
	StartRSSKB      int64          `json:"start_rss_kb"`
	RootVmHWMKB     int64          `json:"root_vmhwm_kb"`
	MaxProcs        int            `json:"max_procs"`
	CPUUserSeconds  float64        `json:"cpu_user_s"`
	CPUSysSeconds   float64        `json:"cpu_sys_s"`
	CPUSeconds      float64        `json:"cpu_s"`
	ProcsByName     map[string]int `json:"procs_by_name_at_peak"`
	ForeignCPU      float64        `json:"foreign_cpu_s"`
	ForeignTop      []string       `json:"foreign_top,omitempty"`
	KernelCPU       float64        `json:"kernel_threads_cpu_s"`
	EndReason       string         `json:"end_reason"`
	MonitorCPUSecnd float64        `json:"monitor_cpu_s"`
}

func cmdProcmon(args []string) error {
	fs := flag.NewFlagSet("procmon", flag.ExitOnError)
	pid := fs.Int("pid", 0, "root process id")
	pidfile := fs.String("pidfile", "", "file holding the root process id")
	interval := fs.Duration("interval", 200*time.Millisecond, "sampling interval")
	maxDur := fs.Duration("max", 30*time.Minute, "stop after this long at the latest")
	pssEvery := fs.Int("pss-every", 5, "for trees of more than 4 processes sample PSS (smaps_rollup, costlier) only every Nth sample; 0: never")
	out := fs.String("out", "-", "result file")
	ready := fs.String("ready-file", "", "create this file once the baseline is taken")
	selfTree := fs.Int("self-tree", os.Getppid(), "process tree of the benchmark itself (script, load generator), left out of the foreign CPU; default: the parent")
	_ = fs.Parse(args)
	root, err := pidFrom(*pid, *pidfile)
	if err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR1)

	t0 := time.Now()
	first := tree(root, allStats())
	if len(first) == 0 {
		return fmt.Errorf("process %d not found", root)
	}
	u0, s0 := treeCPU(first)
	res := procmonResult{RootPID: root, RootComm: first[0].comm, IntervalMS: interval.Milliseconds(),
		StartRSSKB: treeRSSKB(first)}
	var lastU, lastS float64
	// CPU of everything else on the machine: processes outside the tree
	// and outside the bench script's own tree (-self-tree: the script, its
	// load generator, this monitor), and kernel threads. Tracked per process as utime+stime
	// between the first and the last sample that saw it: a lower bound, as
	// up to one interval of an exiting process is missed.
	type seen struct {
		first, last, start uint64
		kthread            bool
		comm               string
	}
	others := map[int]*seen{}
	var retired []seen
	firstSample := true
	sample := func() bool {
		all := allStats()
		ps := tree(root, all)
		if len(ps) == 0 {
			return false
		}
		inTree := make(map[int]bool, len(ps))
		for _, p := range ps {
			inTree[p.pid] = true
		}
		for _, p := range tree(*selfTree, all) {
			inTree[p.pid] = true
		}
		for pid, st := range all {
			if inTree[pid] {
				continue
			}
			t := st.utime + st.stime
			o := others[pid]
			switch {
			case o != nil && o.start == st.start:
				o.last = t
			case firstSample:
				others[pid] = &seen{first: t, last: t, start: st.start, kthread: st.kthread, comm: st.comm}
			default: // a new process (or a new one with a reused pid)
				if o != nil {
					retired = append(retired, *o)
				}
				others[pid] = &seen{first: 0, last: t, start: st.start, kthread: st.kthread, comm: st.comm}
			}
		}
		firstSample = false
		res.Samples++
		lastU, lastS = treeCPU(ps)
		rss := treeRSSKB(ps)
		if rss > res.PeakRSSKB {
			res.PeakRSSKB = rss
			res.ProcsByName = map[string]int{}
			for _, p := range ps {
				res.ProcsByName[p.comm]++
			}
		}
		if len(ps) > res.MaxProcs {
			res.MaxProcs = len(ps)
		}
		// PSS costs a page-table walk per process: every sample for a small
		// tree, every pss-every'th sample for a large one (Postfix)
		if *pssEvery > 0 && (len(ps) <= 4 || (res.Samples-1)%*pssEvery == 0) {
			var sum int64
			for _, p := range ps {
				sum += pssKB(p.pid)
			}
			if sum > res.PeakPSSKB {
				res.PeakPSSKB = sum
			}
		}
		if h := statusKB(root, "VmHWM"); h > 0 {
			res.RootVmHWMKB = h
		}
		return true
	}
	sample()
	if *ready != "" {
		_ = os.WriteFile(*ready, []byte("ok\n"), 0o644)
	}
	tick := time.NewTicker(*interval)
	defer tick.Stop()
	deadline := time.NewTimer(*maxDur)
	defer deadline.Stop()
loop:
	for {
		select {
		case <-sig:
			res.EndReason = "signal"
			sample()
			break loop
		case <-deadline.C:
			res.EndReason = "max duration"
			sample()
			break loop
		case <-tick.C:
			if !sample() {
				res.EndReason = "root process exited"
				break loop
			}
		}
	}
	res.Seconds = time.Since(t0).Seconds()
	byComm := map[string]float64{}
	for _, o := range others {
		retired = append(retired, *o)
	}
	for _, o := range retired {
		d := float64(o.last-o.first) / clkTck
		if o.kthread {
			res.KernelCPU += d
		} else {
			res.ForeignCPU += d
			byComm[o.comm] += d
		}
	}
	res.KernelCPU, res.ForeignCPU = round3(res.KernelCPU), round3(res.ForeignCPU)
	var names []string
	for n := range byComm {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { return byComm[names[i]] > byComm[names[j]] })
	for i, n := range names {
		if i == 5 || byComm[n] < 0.1 {
			break
		}
		res.ForeignTop = append(res.ForeignTop, fmt.Sprintf("%s %.1fs", n, byComm[n]))
	}
	res.CPUUserSeconds = round3(lastU - u0)
	res.CPUSysSeconds = round3(lastS - s0)
	res.CPUSeconds = round3(res.CPUUserSeconds + res.CPUSysSeconds)
	if self, err := readStat(os.Getpid()); err == nil {
		res.MonitorCPUSecnd = round3(float64(self.utime+self.stime) / clkTck)
	}
	return writeJSON(*out, res)
}

func round3(f float64) float64 { return float64(int64(f*1000+0.5)) / 1000 }

func cmdRSS(args []string) error {
	fs := flag.NewFlagSet("rss", flag.ExitOnError)
	pid := fs.Int("pid", 0, "root process id")
	pidfile := fs.String("pidfile", "", "file holding the root process id")
	_ = fs.Parse(args)
	root, err := pidFrom(*pid, *pidfile)
	if err != nil {
		return err
	}
	ps := tree(root, allStats())
	if len(ps) == 0 {
		return fmt.Errorf("process %d not found", root)
	}
	var pss int64
	for _, p := range ps {
		pss += pssKB(p.pid)
	}
	return writeJSON("-", map[string]any{
		"pid": root, "procs": len(ps), "rss_kb": treeRSSKB(ps), "pss_kb": pss,
		"root_vmrss_kb": statusKB(root, "VmRSS"), "root_vmhwm_kb": statusKB(root, "VmHWM"),
		"unix_nano": time.Now().UnixNano(),
	})
}

// ------------------------------------------------------------ fsync

type fsyncResult struct {
	Dir        string  `json:"dir"`
	Writers    int     `json:"writers"`
	SizeBytes  int     `json:"size_bytes"`
	DirSync    bool    `json:"dir_fsync"`
	Fsyncs     int64   `json:"files_synced"`
	Seconds    float64 `json:"seconds"`
	PerSec     float64 `json:"files_per_sec"`
	P50ms      float64 `json:"latency_p50_ms"`
	P99ms      float64 `json:"latency_p99_ms"`
	Filesystem string  `json:"filesystem,omitempty"`
}

func cmdFsync(args []string) error {
	fs := flag.NewFlagSet("fsync", flag.ExitOnError)
	dir := fs.String("dir", "", "directory on the file system to test (a fresh subdirectory is used)")
	writers := fs.Int("writers", 1, "concurrent writers")
	size := fs.Int("size", 10240, "bytes per file")
	dur := fs.Duration("duration", 5*time.Second, "how long to run")
	maxFiles := fs.Int64("max", 200000, "stop after this many files in total")
	dirSync := fs.Bool("dirsync", false, "also fsync the directory after each create (what a durable queue needs)")
	out := fs.String("out", "-", "result file")
	_ = fs.Parse(args)
	if *dir == "" || *writers < 1 || *writers > 1000 || *size < 1 || *size > 64<<20 {
		return errors.New("need -dir, 1<=writers<=1000, 1<=size<=64MiB")
	}
	work, err := os.MkdirTemp(*dir, "fsyncbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	buf := bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n"), *size/64+1)[:*size]
	var mu sync.Mutex
	var lat []time.Duration
	var total int64
	var firstErr error
	start := time.Now()
	end := start.Add(*dur)
	var wg sync.WaitGroup
	for w := 0; w < *writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			d, err := os.Open(work)
			if err != nil {
				mu.Lock()
				firstErr = err
				mu.Unlock()
				return
			}
			defer d.Close()
			local := make([]time.Duration, 0, 4096)
			for i := 0; time.Now().Before(end); i++ {
				mu.Lock()
				if total >= *maxFiles {
					mu.Unlock()
					break
				}
				total++
				mu.Unlock()
				name := filepath.Join(work, fmt.Sprintf("w%d-%d", w, i))
				t := time.Now()
				f, err := os.OpenFile(name, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o600)
				if err == nil {
					_, err = f.Write(buf)
					if err == nil {
						err = f.Sync()
					}
					if cerr := f.Close(); err == nil {
						err = cerr
					}
				}
				if err == nil && *dirSync {
					err = d.Sync()
				}
				local = append(local, time.Since(t))
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					break
				}
				_ = os.Remove(name) // not synced; keeps the directory small
			}
			mu.Lock()
			lat = append(lat, local...)
			mu.Unlock()
		}(w)
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	secs := time.Since(start).Seconds()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	res := fsyncResult{Dir: *dir, Writers: *writers, SizeBytes: *size, DirSync: *dirSync,
		Fsyncs: int64(len(lat)), Seconds: round3(secs), PerSec: round3(float64(len(lat)) / secs)}
	if len(lat) > 0 {
		res.P50ms = round3(float64(lat[len(lat)/2].Microseconds()) / 1000)
		res.P99ms = round3(float64(lat[min(len(lat)-1, len(lat)*99/100)].Microseconds()) / 1000)
	}
	return writeJSON(*out, res)
}

// ------------------------------------------------------------ maildirwait

type maildirResult struct {
	Dir             string  `json:"dir"`
	Want            int     `json:"want"`
	Count           int     `json:"count"`
	Complete        bool    `json:"complete"`
	LastUnixNano    int64   `json:"last_delivered_unix_nano"`
	StartUnixNano   int64   `json:"start_unix_nano,omitempty"`
	DeliveredSecs   float64 `json:"first_send_to_last_delivered_s,omitempty"`
	DeliveredPerSec float64 `json:"delivered_per_sec,omitempty"`
	WaitedSeconds   float64 `json:"waited_s"`
}

func cmdMaildirWait(args []string) error {
	fs := flag.NewFlagSet("maildirwait", flag.ExitOnError)
	dir := fs.String("dir", "", "the Maildir's new/ directory")
	want := fs.Int("want", 0, "number of messages to wait for")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up after this long")
	startNano := fs.Int64("start-nano", 0, "unix nanoseconds of the first send (for the rate)")
	interval := fs.Duration("interval", 100*time.Millisecond, "poll interval")
	out := fs.String("out", "-", "result file")
	_ = fs.Parse(args)
	if *dir == "" || *want < 0 {
		return errors.New("need -dir and -want")
	}
	t0 := time.Now()
	deadline := t0.Add(*timeout)
	count := 0
	for {
		count = countDir(*dir)
		if count >= *want || time.Now().After(deadline) {
			break
		}
		time.Sleep(*interval)
	}
	res := maildirResult{Dir: *dir, Want: *want, Count: count, Complete: count >= *want,
		StartUnixNano: *startNano, WaitedSeconds: round3(time.Since(t0).Seconds())}
	// the delivery time of a message is the ctime of its file in new/: the
	// rename from tmp/ into new/ sets it. The last delivery is the largest.
	ents, _ := os.ReadDir(*dir)
	for _, e := range ents {
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join(*dir, e.Name()), &st) == nil {
			if n := st.Ctim.Nano(); n > res.LastUnixNano {
				res.LastUnixNano = n
			}
		}
	}
	if *startNano > 0 && res.LastUnixNano > *startNano {
		res.DeliveredSecs = round3(float64(res.LastUnixNano-*startNano) / 1e9)
		res.DeliveredPerSec = round3(float64(count) / res.DeliveredSecs)
	}
	return writeJSON(*out, res)
}

func countDir(dir string) int {
	d, err := os.Open(dir)
	if err != nil {
		return 0
	}
	defer d.Close()
	n := 0
	for i := 0; i < 1_000_000; i++ {
		names, err := d.Readdirnames(4096)
		n += len(names)
		if err != nil || len(names) == 0 {
			break
		}
	}
	return n
}

// ------------------------------------------------------------ waitport

func cmdWaitPort(args []string) error {
	fs := flag.NewFlagSet("waitport", flag.ExitOnError)
	addr := fs.String("addr", "", "loopback HOST:PORT")
	timeout := fs.Duration("timeout", 60*time.Second, "give up after this long")
	_ = fs.Parse(args)
	host, _, err := net.SplitHostPort(*addr)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("refusing %q: loopback IP literals only", host)
	}
	deadline := time.Now().Add(*timeout)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", *addr, time.Second)
		if err == nil {
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			line, rerr := bufio.NewReader(c).ReadString('\n')
			if rerr == nil && strings.HasPrefix(line, "220") {
				_, _ = c.Write([]byte("QUIT\r\n"))
				c.Close()
				fmt.Print(line)
				return nil
			}
			c.Close()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("no SMTP greeting from %s within %s", *addr, *timeout)
}

// ------------------------------------------------------------ freeport

func cmdFreePort(args []string) error {
	fs := flag.NewFlagSet("freeport", flag.ExitOnError)
	n := fs.Int("n", 1, "how many ports")
	from := fs.Int("from", 61000, "lowest port (above the kernel's ephemeral range, so client sockets never take it)")
	to := fs.Int("to", 64999, "highest port")
	_ = fs.Parse(args)
	if *n < 1 || *n > 100 || *from < 1024 || *to > 65535 || *to-*from < *n {
		return errors.New("need 1 <= n <= 100 and 1024 <= from < to <= 65535")
	}
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	span := *to - *from + 1
	off := int(time.Now().UnixNano() % int64(span))
	for i := 0; i < span && len(ls) < *n; i++ {
		p := *from + (off+i)%span
		l, err := net.Listen("tcp4", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			continue
		}
		ls = append(ls, l)
		fmt.Println(p)
	}
	if len(ls) < *n {
		return errors.New("not enough free ports")
	}
	return nil
}

// ------------------------------------------------------------ quiet

// cpuTimes returns busy and total jiffies over all CPUs from /proc/stat.
func cpuTimes() (busy, total uint64, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, 0, errors.New("unexpected /proc/stat")
	}
	for i, v := range f[1:] {
		n, _ := strconv.ParseUint(v, 10, 64)
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total, nil
}

func cmdQuiet(args []string) error {
	fs := flag.NewFlagSet("quiet", flag.ExitOnError)
	maxShare := fs.Float64("max-busy", 0.10, "quiet means at most this share of all CPUs busy")
	window := fs.Duration("window", 2*time.Second, "measuring window")
	timeout := fs.Duration("timeout", 60*time.Second, "give up waiting after this long (exit 0 all the same)")
	_ = fs.Parse(args)
	t0 := time.Now()
	for i := 0; i < 10000; i++ {
		b0, t0j, err := cpuTimes()
		if err != nil {
			return err
		}
		time.Sleep(*window)
		b1, t1j, err := cpuTimes()
		if err != nil {
			return err
		}
		share := 0.0
		if t1j > t0j {
			share = float64(b1-b0) / float64(t1j-t0j)
		}
		if share <= *maxShare {
			fmt.Printf("quiet after %.1fs (%.0f%% busy)\n", time.Since(t0).Seconds(), 100*share)
			return nil
		}
		if time.Since(t0) >= *timeout {
			fmt.Printf("not quiet after %.1fs (%.0f%% busy); going on\n", time.Since(t0).Seconds(), 100*share)
			return nil
		}
	}
	return nil
}
