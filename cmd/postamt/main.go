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
	"runtime/pprof"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/postamt/postamt/internal/app"
	"github.com/postamt/postamt/internal/check"
	"github.com/postamt/postamt/internal/config"
	"github.com/postamt/postamt/internal/observe"
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
	root.AddCommand(serveCmd(), sandboxCmd(), configCmd(), checkCmd(), queueCmd())
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
