// Command postamt is the Postamt mail server and its tools. It only parses flags and wires
// packages together; the behaviour lives in internal/.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/postamt/postamt/internal/admin"
	"github.com/postamt/postamt/internal/app"
	"github.com/postamt/postamt/internal/check"
	"github.com/postamt/postamt/internal/config"
	"github.com/postamt/postamt/internal/observe"
	"github.com/postamt/postamt/internal/quarantine"
	"github.com/postamt/postamt/internal/queue"
)

func main() {
	if err := rootCmd().Execute(); err != nil {
		os.Exit(1)
	}
}

func rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "postamt",
		Short:         "Postamt, a mail transfer agent",
		SilenceUsage:  true,
		SilenceErrors: false,
	}
	root.AddCommand(serveCmd(), sandboxCmd(), configCmd(), checkCmd(), queueCmd(), quarantineCmd(), userCmd(), dkimCmd())
	return root
}

func serveCmd() *cobra.Command {
	var file, cpuProfile string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the mail server (with embedded defaults when no --config is given)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(file)
			if err != nil {
				return err
			}
			log, err := observe.NewLogger(os.Stderr, cfg.Log.Format, cfg.Log.Level)
			if err != nil {
				return err
			}
			log.Debug("effective configuration\n" + cfg.Dump())
			if cpuProfile != "" {
				stop, err := startCPUProfile(cpuProfile)
				if err != nil {
					return err
				}
				defer stop()
			}
			return runApp(cfg, log)
		},
	}
	cmd.Flags().StringVarP(&file, "config", "c", "", "configuration file (TOML); defaults apply to everything it leaves out")
	cmd.Flags().StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile (pprof) to this file until shutdown")
	return cmd
}

// runApp starts the app and waits for a signal or a failed listener.
func runApp(cfg *config.Config, log *slog.Logger) error {
	a, err := app.Start(cfg, log)
	if err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	var runErr error
	select {
	case s := <-sig:
		log.Info("signal received, shutting down", "signal", s.String())
	case runErr = <-a.Err():
		log.Error("listener failed", "err", runErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := a.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return runErr
}

func sandboxCmd() *cobra.Command {
	var file, smtpAddr, httpAddr, dataDir string
	var memory bool
	cmd := &cobra.Command{
		Use:   "sandbox",
		Short: "Run a fake SMTP server for testing: capture all mail, deliver none, web UI and API",
		Long: `Runs Postamt as a sandbox: SMTP on 127.0.0.1:1025 accepts any sender and recipient,
every message is stored and shown in the web UI and REST API on http://127.0.0.1:8025/,
and nothing is delivered. It is the same pipeline as "postamt serve" with mode = "sandbox";
a --config file may change any setting.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.LoadSandbox(file)
			if err != nil {
				return err
			}
			if smtpAddr != "" {
				cfg.SMTP.Listen = []string{smtpAddr}
			}
			if httpAddr != "" {
				cfg.Sandbox.HTTPListen = httpAddr
			}
			if dataDir != "" {
				cfg.DataDir = dataDir
			}
			if memory {
				cfg.Sandbox.MemoryOnly = true
			}
			if err := cfg.Validate(); err != nil {
				return err
			}
			log, err := observe.NewLogger(os.Stderr, cfg.Log.Format, cfg.Log.Level)
			if err != nil {
				return err
			}
			return runApp(cfg, log)
		},
	}
	cmd.Flags().StringVarP(&file, "config", "c", "", "configuration file (TOML) over the sandbox preset")
	cmd.Flags().StringVar(&smtpAddr, "smtp", "", "SMTP listen address (default 127.0.0.1:1025)")
	cmd.Flags().StringVar(&httpAddr, "http", "", "web UI and API listen address (default 127.0.0.1:8025)")
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "where captured mail is kept (default ./postamt-sandbox)")
	cmd.Flags().BoolVar(&memory, "memory", false, "keep captured mail in memory only; nothing is left on disk")
	return cmd
}

func configCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Configuration tools"}
	var dump bool
	checkCmd := &cobra.Command{
		Use:   "check FILE",
		Short: "Validate a configuration file without starting the server",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := config.Load(args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: OK\n", args[0])
			if dump {
				fmt.Fprint(cmd.OutOrStdout(), cfg.Dump())
			}
			return nil
		},
	}
	checkCmd.Flags().BoolVar(&dump, "dump", false, "print the effective configuration")
	cmd.AddCommand(checkCmd)
	return cmd
}

func checkCmd() *cobra.Command {
	var o check.Options
	cmd := &cobra.Command{
		Use:   "check HOST[:PORT]",
		Short: "Diagnose an SMTP server: greeting, extensions, STARTTLS and certificate, optionally a test message",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Addr = args[0]
			return check.Run(cmd.Context(), cmd.OutOrStdout(), o)
		},
	}
	cmd.Flags().StringVar(&o.From, "from", "", "send a test message from this address")
	cmd.Flags().StringVar(&o.To, "to", "", "send a test message to this address (enables sending)")
	cmd.Flags().BoolVar(&o.NoTLS, "no-tls", false, "do not try STARTTLS")
	cmd.Flags().StringVar(&o.Helo, "helo", "", "name to send in EHLO (default: this host's name)")
	cmd.Flags().DurationVar(&o.Timeout, "timeout", 30*time.Second, "timeout for each step")
	return cmd
}

func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

func queueCmd() *cobra.Command {
	o := &queueOpts{}
	cmd := &cobra.Command{
		Use:   "queue",
		Short: "Inspect and administer the mail queue of a running server",
		Long: `Inspect and administer the mail queue. The commands talk to the running server through its
admin API (the unix socket <data_dir>/admin.sock, authenticated with <data_dir>/admin.token), so
that no change races a delivery. Without a running server, list and show read the queue database
directly (read-only) and say so; the other commands refuse.`,
	}
	cmd.PersistentFlags().StringVarP(&o.file, "config", "c", "", "configuration file (for data_dir)")
	cmd.PersistentFlags().StringVar(&o.dataDir, "data-dir", "", "data directory of the server (overrides the configuration's data_dir)")
	cmd.PersistentFlags().BoolVar(&o.json, "json", false, "print JSON")

	var f queue.Filter
	var limit int
	list := &cobra.Command{
		Use:   "list",
		Short: "List recipients waiting for delivery or failed, with the reason",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.State != "" && f.State != "pending" && f.State != "failed" {
				return fmt.Errorf("--state %q: use pending or failed", f.State)
			}
			c, dir, err := o.client(cmd, false)
			if err != nil {
				return err
			}
			var es []queue.Entry
			var more bool
			if c != nil {
				es, more, err = c.List(cmd.Context(), f, limit)
			} else {
				es, more, err = queue.ListDir(cmd.Context(), dir, f, limit)
			}
			if err != nil {
				return err
			}
			if more {
				fmt.Fprintf(cmd.ErrOrStderr(), "note: only the first %d matching recipients are listed; narrow the filter or raise --limit (0 for all)\n", limit)
			}
			if o.json {
				if es == nil {
					es = []queue.Entry{}
				}
				return printJSON(cmd, es)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tRECEIVED\tSIZE\tFROM\tTO\tSTATE\tATTEMPTS\tNEXT\tLAST ERROR")
			for _, e := range es {
				next := "-"
				if !e.NextAttempt.IsZero() {
					next = e.NextAttempt.UTC().Format(time.DateTime)
				}
				state := e.State
				if e.Held {
					state += ",held"
				}
				fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\t%d\t%s\t%s\n", e.ID, e.Received.UTC().Format(time.DateTime), e.Size,
					angle(e.From), e.Rcpt, state, e.Attempts, next, e.LastError)
			}
			w.Flush()
			fmt.Fprintf(cmd.OutOrStdout(), "%d recipient(s)\n", len(es))
			return nil
		},
	}
	list.Flags().StringVar(&f.ID, "id", "", "only this queue ID")
	list.Flags().StringVar(&f.From, "from", "", "only this sender")
	list.Flags().StringVar(&f.To, "to", "", "only this recipient")
	list.Flags().StringVar(&f.Domain, "domain", "", "only recipients in this domain")
	list.Flags().StringVar(&f.State, "state", "", "only pending or failed")
	list.Flags().IntVar(&limit, "limit", admin.DefaultListLimit, "list at most this many recipients (0 for all)")

	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show a message's envelope and each recipient's state, attempts, last reply and next attempt",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, dir, err := o.client(cmd, false)
			if err != nil {
				return err
			}
			var m *queue.Message
			if c != nil {
				m, err = c.Show(cmd.Context(), args[0])
			} else {
				m, err = queue.ShowDir(cmd.Context(), dir, args[0])
			}
			if err != nil {
				return err
			}
			if o.json {
				return printJSON(cmd, m)
			}
			printMessage(cmd, m)
			return nil
		},
	}

	var all bool
	retry := &cobra.Command{
		Use:   "retry ID | --all",
		Short: "Attempt delivery now instead of at the next scheduled retry",
		Args: func(cmd *cobra.Command, args []string) error {
			if all == (len(args) == 1) || len(args) > 1 {
				return errors.New("give one queue ID or --all")
			}
			return nil
		},
		RunE: o.mutate(func(ctx context.Context, c *admin.Client, args []string) (any, string, error) {
			var n int
			var err error
			if all {
				n, err = c.RetryAll(ctx)
			} else {
				n, err = c.Retry(ctx, args[0])
			}
			return admin.CountResponse{Recipients: n}, fmt.Sprintf("%d recipient(s) scheduled for delivery now", n), err
		}),
	}
	retry.Flags().BoolVar(&all, "all", false, "every message that is not held")

	simple := func(use, short, done string, op func(*admin.Client, context.Context, string) error) *cobra.Command {
		return &cobra.Command{
			Use: use + " ID", Short: short, Args: cobra.ExactArgs(1),
			RunE: o.mutate(func(ctx context.Context, c *admin.Client, args []string) (any, string, error) {
				err := op(c, ctx, args[0])
				return map[string]any{"id": args[0], "ok": err == nil}, args[0] + ": " + done, err
			}),
		}
	}
	var reason string
	bounce := &cobra.Command{
		Use:   "bounce ID --reason TEXT",
		Short: "Fail every undelivered recipient now and return the message to its sender with a DSN giving the reason",
		Args:  cobra.ExactArgs(1),
		RunE: o.mutate(func(ctx context.Context, c *admin.Client, args []string) (any, string, error) {
			n, err := c.Bounce(ctx, args[0], reason)
			return admin.CountResponse{Recipients: n}, fmt.Sprintf("%s: %d recipient(s) failed; the sender gets a DSN", args[0], n), err
		}),
	}
	bounce.Flags().StringVar(&reason, "reason", "", "why, in words the sender will read in the DSN (required)")
	bounce.MarkFlagRequired("reason")

	cmd.AddCommand(list, show, retry,
		simple("hold", "Stop delivering a message until it is released (survives restarts)", "held", (*admin.Client).Hold),
		simple("release", "Let a held message be delivered again, at once", "released", (*admin.Client).Release),
		simple("delete", "Remove a message from the queue without telling its sender", "deleted", (*admin.Client).Delete),
		bounce)
	return cmd
}

type queueOpts struct {
	file, dataDir string
	json          bool
}

// client finds the data directory and connects to the running server's admin API. c is nil when
// no server runs and mutating is false: the caller reads the database itself, and the user is told.
func (o *queueOpts) client(cmd *cobra.Command, mutating bool) (c *admin.Client, queueDir string, err error) {
	dir := o.dataDir
	if dir == "" {
		cfg, err := config.Load(o.file)
		if err != nil {
			return nil, "", err
		}
		dir = cfg.DataDir
	}
	queueDir = filepath.Join(dir, "queue")
	c, err = admin.NewClient(dir)
	if err == nil && !mutating {
		// Find out now whether the server answers, so that list and show can fall back.
		err = c.Ping(cmd.Context())
	}
	switch {
	case errors.Is(err, admin.ErrNotRunning) && !mutating:
		fmt.Fprintf(cmd.ErrOrStderr(), "note: the server is not running; read %s directly (read-only)\n", queueDir)
		return nil, queueDir, nil
	case errors.Is(err, admin.ErrNotRunning):
		return nil, "", fmt.Errorf("the server is not running (no admin socket answers in %s): start it with postamt serve; "+
			"the queue is changed only through the running server so that no change races a delivery", dir)
	case err != nil:
		return nil, "", err
	}
	return c, queueDir, nil
}

// mutate wraps a command that changes the queue: it needs the running server.
func (o *queueOpts) mutate(op func(ctx context.Context, c *admin.Client, args []string) (any, string, error)) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		c, _, err := o.client(cmd, true)
		if err != nil {
			return err
		}
		v, human, err := op(cmd.Context(), c, args)
		if err != nil {
			return err
		}
		if o.json {
			return printJSON(cmd, v)
		}
		fmt.Fprintln(cmd.OutOrStdout(), human)
		return nil
	}
}

func printJSON(cmd *cobra.Command, v any) error {
	enc := json.NewEncoder(cmd.OutOrStdout())
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func angle(addr string) string {
	if addr == "" {
		return "<>"
	}
	return addr
}

func printMessage(cmd *cobra.Command, m *queue.Message) {
	w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	yes := map[bool]string{true: "yes", false: "no"}
	fmt.Fprintf(w, "ID:\t%s\n", m.ID)
	fmt.Fprintf(w, "From:\t%s\n", angle(m.From))
	fmt.Fprintf(w, "Received:\t%s\n", m.Received.UTC().Format(time.RFC3339))
	if m.Client != "" {
		fmt.Fprintf(w, "Client:\t%s (HELO %s)\n", m.Client, m.Helo)
	}
	fmt.Fprintf(w, "Size:\t%d\n", m.Size)
	fmt.Fprintf(w, "Held:\t%s\n", yes[m.Held])
	if m.Bouncing {
		fmt.Fprintf(w, "Bouncing:\tyes (a DSN to the sender is due)\n")
	}
	if m.EnvID != "" || m.Ret != "" {
		fmt.Fprintf(w, "DSN:\tENVID=%s RET=%s\n", m.EnvID, m.Ret)
	}
	w.Flush()
	fmt.Fprintln(cmd.OutOrStdout(), "Recipients:")
	for _, r := range m.Recipients {
		state := r.State
		if r.InFlight {
			state += " (attempt in progress)"
		}
		fmt.Fprintf(cmd.OutOrStdout(), "  %d. %s: %s, %d attempt(s), route %s %s\n", r.Index+1, r.Addr, state, r.Attempts, r.Transport, r.NextHop)
		if r.LastReply != "" {
			from := ""
			if r.RemoteMTA != "" {
				from = " (from " + r.RemoteMTA + ")"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "     last reply%s: %s\n", from, r.LastReply)
		}
		if !r.NextAttempt.IsZero() {
			fmt.Fprintf(cmd.OutOrStdout(), "     next attempt: %s\n", r.NextAttempt.UTC().Format(time.RFC3339))
		}
	}
}

// quarantineCmd works on the quarantine database beside a running server (SQLite in WAL mode).
// Release only marks the message: the running server moves it into its queue (it owns the
// queue), so --wait polls until that happened.
func quarantineCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "quarantine", Short: "List, show, release or delete quarantined messages"}
	var file string
	cmd.PersistentFlags().StringVarP(&file, "config", "c", "", "configuration file (for data_dir and quarantine.path)")
	open := func() (*quarantine.Store, error) {
		cfg, err := config.Load(file)
		if err != nil {
			return nil, err
		}
		return quarantine.Open(cfg.Path(cfg.Quarantine.Path))
	}
	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List quarantined messages with the reason",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := open()
			if err != nil {
				return err
			}
			defer st.Close()
			items, err := st.List(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				if items == nil {
					items = []quarantine.Item{}
				}
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(items)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tQUARANTINED\tSIZE\tFROM\tTO\tREASON")
			for _, it := range items {
				from := it.From
				if from == "" {
					from = "<>"
				}
				reason := it.Reason
				if it.Release {
					reason = "(release requested) " + reason
				}
				fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\n", it.ID, it.Quarantined.UTC().Format(time.DateTime), it.Size,
					from, strings.Join(it.Rcpts, ","), reason)
			}
			w.Flush()
			fmt.Fprintf(cmd.OutOrStdout(), "%d message(s)\n", len(items))
			return nil
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	var rawOnly bool
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Print a quarantined message: envelope and reason, then the message",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := open()
			if err != nil {
				return err
			}
			defer st.Close()
			it, body, err := st.Get(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if !rawOnly {
				from := it.From
				if from == "" {
					from = "<>"
				}
				fmt.Fprintf(out, "ID: %s\nReceived: %s\nQuarantined: %s\nFrom: %s\nTo: %s\nSize: %d\nReason: %s\n\n",
					it.ID, it.Received.UTC().Format(time.RFC3339), it.Quarantined.UTC().Format(time.RFC3339), from,
					strings.Join(it.Rcpts, ", "), it.Size, it.Reason)
			}
			_, err = out.Write(body)
			return err
		},
	}
	show.Flags().BoolVar(&rawOnly, "raw", false, "print only the message")
	var wait time.Duration
	release := &cobra.Command{
		Use:   "release ID...",
		Short: "Deliver quarantined messages (the running server moves them into its queue)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := open()
			if err != nil {
				return err
			}
			defer st.Close()
			for _, id := range args {
				if err := st.RequestRelease(cmd.Context(), id); err != nil {
					return err
				}
			}
			if wait <= 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "release requested for %d message(s); the running server delivers them\n", len(args))
				return nil
			}
			deadline := time.Now().Add(wait)
			for _, id := range args {
				for {
					_, _, err := st.Get(cmd.Context(), id)
					if errors.Is(err, quarantine.ErrNotFound) {
						fmt.Fprintf(cmd.OutOrStdout(), "%s: released\n", id)
						break
					}
					if err != nil {
						return err
					}
					if time.Now().After(deadline) {
						return fmt.Errorf("%s: release requested but not done after %v (is the server running?)", id, wait)
					}
					time.Sleep(200 * time.Millisecond)
				}
			}
			return nil
		},
	}
	release.Flags().DurationVar(&wait, "wait", 10*time.Second, "wait this long for the server to release (0: do not wait)")
	del := &cobra.Command{
		Use:   "delete ID...",
		Short: "Delete quarantined messages for good",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := open()
			if err != nil {
				return err
			}
			defer st.Close()
			for _, id := range args {
				if err := st.Delete(cmd.Context(), id); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: deleted\n", id)
			}
			return nil
		},
	}
	cmd.AddCommand(list, show, release, del)
	return cmd
}
