// Command postamt is the Postamt mail server and its tools. It only parses flags and wires
// packages together; the behaviour lives in internal/.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

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
	root.AddCommand(serveCmd(), configCmd(), checkCmd(), queueCmd(), quarantineCmd())
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
		},
	}
	cmd.Flags().StringVarP(&file, "config", "c", "", "configuration file (TOML); defaults apply to everything it leaves out")
	cmd.Flags().StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile (pprof) to this file until shutdown")
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
	cmd := &cobra.Command{Use: "queue", Short: "Inspect the mail queue"}
	var file string
	var f queue.Filter
	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List recipients waiting for delivery or failed, with the reason (works beside a running server)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(file)
			if err != nil {
				return err
			}
			all, err := queue.List(cmd.Context(), cfg.Path("queue"))
			if err != nil {
				return err
			}
			es := all[:0]
			for _, e := range all {
				if f.Match(e) {
					es = append(es, e)
				}
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if es == nil {
					es = []queue.Entry{}
				}
				return enc.Encode(es)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tRECEIVED\tSIZE\tFROM\tTO\tSTATE\tATTEMPTS\tNEXT\tLAST ERROR")
			for _, e := range es {
				next := "-"
				if !e.NextAttempt.IsZero() {
					next = e.NextAttempt.UTC().Format(time.DateTime)
				}
				from := e.From
				if from == "" {
					from = "<>"
				}
				fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\t%d\t%s\t%s\n", e.ID, e.Received.UTC().Format(time.DateTime), e.Size,
					from, e.Rcpt, e.State, e.Attempts, next, e.LastError)
			}
			w.Flush()
			fmt.Fprintf(cmd.OutOrStdout(), "%d recipient(s)\n", len(es))
			return nil
		},
	}
	list.Flags().StringVarP(&file, "config", "c", "", "configuration file (for data_dir)")
	list.Flags().StringVar(&f.ID, "id", "", "only this queue ID")
	list.Flags().StringVar(&f.From, "from", "", "only this sender")
	list.Flags().StringVar(&f.To, "to", "", "only this recipient")
	list.Flags().StringVar(&f.Domain, "domain", "", "only recipients in this domain")
	list.Flags().StringVar(&f.State, "state", "", "only pending or failed")
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(list)
	return cmd
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
