package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/postamt/postamt/internal/app"
	"github.com/postamt/postamt/internal/config"
	"github.com/postamt/postamt/internal/dns"
	"github.com/postamt/postamt/internal/mailauth"
	"github.com/postamt/postamt/internal/users"
)

// userCmd manages submission accounts. The user database is SQLite in WAL mode, so these
// commands work while the server runs; the server reads it on every AUTH and MAIL, so changes
// apply to the next command a client sends.
func userCmd() *cobra.Command {
	var file string
	cmd := &cobra.Command{Use: "user", Short: "Manage submission accounts (works beside a running server)"}
	cmd.PersistentFlags().StringVarP(&file, "config", "c", "", "configuration file (for data_dir and submission.users_db)")
	open := func() (*users.Store, error) {
		cfg, err := config.Load(file)
		if err != nil {
			return nil, err
		}
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return nil, err
		}
		return users.Open(cfg.Path(cfg.Submission.UsersDB))
	}
	var stdinPass bool
	var senders []string
	add := &cobra.Command{
		Use:   "add NAME",
		Short: "Create an account; NAME is the login (usually the address). Prints a generated password unless --password-stdin",
		Long: `Create an account. When NAME is an address it may send as that address; --sender adds more:
an address ("sales@example.org") or a whole domain ("@example.org", for administrators and
applications that send as anyone in it). Without --password-stdin a random password is generated
and printed once.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pass, generated, err := readPassword(cmd.InOrStdin(), stdinPass)
			if err != nil {
				return err
			}
			s, err := open()
			if err != nil {
				return err
			}
			defer s.Close()
			if err := s.Add(cmd.Context(), args[0], pass, senders); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "user %s added\n", users.Normalize(args[0]))
			if generated {
				fmt.Fprintf(cmd.OutOrStdout(), "password: %s\n", pass)
			}
			return nil
		},
	}
	add.Flags().BoolVar(&stdinPass, "password-stdin", false, "read the password from the first line of standard input")
	add.Flags().StringSliceVar(&senders, "sender", nil, "also allow this sender address or @domain (repeatable)")

	del := &cobra.Command{
		Use: "del NAME", Aliases: []string{"delete"}, Short: "Delete an account", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := open()
			if err != nil {
				return err
			}
			defer s.Close()
			if err := s.Delete(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "user %s deleted\n", users.Normalize(args[0]))
			return nil
		},
	}
	var passStdin bool
	passwd := &cobra.Command{
		Use: "passwd NAME", Short: "Set a new password (generated and printed unless --password-stdin)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pass, generated, err := readPassword(cmd.InOrStdin(), passStdin)
			if err != nil {
				return err
			}
			s, err := open()
			if err != nil {
				return err
			}
			defer s.Close()
			if err := s.SetPassword(cmd.Context(), args[0], pass); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "password of %s changed\n", users.Normalize(args[0]))
			if generated {
				fmt.Fprintf(cmd.OutOrStdout(), "password: %s\n", pass)
			}
			return nil
		},
	}
	passwd.Flags().BoolVar(&passStdin, "password-stdin", false, "read the password from the first line of standard input")
	var addS, rmS []string
	senderCmd := &cobra.Command{
		Use: "sender NAME", Short: "Change what an account may send as (--add, --remove)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(addS)+len(rmS) == 0 {
				return errors.New("nothing to do: give --add or --remove")
			}
			s, err := open()
			if err != nil {
				return err
			}
			defer s.Close()
			if len(addS) > 0 {
				if err := s.AddSenders(cmd.Context(), args[0], addS); err != nil {
					return err
				}
			}
			if len(rmS) > 0 {
				if err := s.RemoveSenders(cmd.Context(), args[0], rmS); err != nil {
					return err
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "senders of %s changed\n", users.Normalize(args[0]))
			return nil
		},
	}
	senderCmd.Flags().StringSliceVar(&addS, "add", nil, "allow this address or @domain")
	senderCmd.Flags().StringSliceVar(&rmS, "remove", nil, "no longer allow this address or @domain")
	list := &cobra.Command{
		Use: "list", Short: "List accounts and what they may send as", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := open()
			if err != nil {
				return err
			}
			defer s.Close()
			us, err := s.List(cmd.Context())
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "USER\tCREATED\tMAY SEND AS")
			for _, u := range us {
				fmt.Fprintf(w, "%s\t%s\t%s\n", u.Name, u.Created.UTC().Format(time.DateTime), strings.Join(u.Senders, " "))
			}
			w.Flush()
			fmt.Fprintf(cmd.OutOrStdout(), "%d user(s)\n", len(us))
			return nil
		},
	}
	cmd.AddCommand(add, del, passwd, senderCmd, list, tokenCmd(open))
	return cmd
}

// tokenCmd manages application passwords: one per device or program, usable wherever the
// account's password is (AUTH PLAIN/LOGIN), revocable one by one.
func tokenCmd(open func() (*users.Store, error)) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Application passwords for mail programs and machines (add, del, list)"}
	add := &cobra.Command{
		Use: "add NAME LABEL", Short: "Create an application password for NAME and print it (once)", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := open()
			if err != nil {
				return err
			}
			defer s.Close()
			tok, err := s.AddToken(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "token %s for %s: %s\n", args[1], users.Normalize(args[0]), tok)
			return nil
		},
	}
	del := &cobra.Command{
		Use: "del NAME LABEL", Short: "Revoke an application password", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := open()
			if err != nil {
				return err
			}
			defer s.Close()
			if err := s.DeleteToken(cmd.Context(), args[0], args[1]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "token %s of %s revoked\n", args[1], users.Normalize(args[0]))
			return nil
		},
	}
	list := &cobra.Command{
		Use: "list NAME", Short: "List a user's application passwords (labels only)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := open()
			if err != nil {
				return err
			}
			defer s.Close()
			ts, err := s.Tokens(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			for _, t := range ts {
				fmt.Fprintf(cmd.OutOrStdout(), "%s\t%s\n", t.Label, t.Created.UTC().Format(time.DateTime))
			}
			return nil
		},
	}
	cmd.AddCommand(add, del, list)
	return cmd
}

// readPassword reads one line from r, or generates a password.
func readPassword(r io.Reader, fromStdin bool) (pass string, generated bool, err error) {
	if !fromStdin {
		return users.GeneratePassword(), true, nil
	}
	line, err := bufio.NewReader(io.LimitReader(r, 4096)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", false, err
	}
	return strings.TrimRight(line, "\r\n"), false, nil
}

func dkimCmd() *cobra.Command {
	var file string
	cmd := &cobra.Command{Use: "dkim", Short: "DKIM signing keys"}
	cmd.PersistentFlags().StringVarP(&file, "config", "c", "", "configuration file (for data_dir, dkim.key_dir and outbound.dns_servers)")
	var selector, algo string
	keygen := &cobra.Command{
		Use:   "keygen DOMAIN",
		Short: "Generate a signing key (written 0600 to dkim.key_dir/DOMAIN/SELECTOR.key) and print the DNS record to publish",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := config.Load(file)
			if err != nil {
				return err
			}
			domain := strings.ToLower(strings.TrimSuffix(args[0], "."))
			if selector == "" {
				selector = strings.TrimSuffix(algo, "25519") + time.Now().UTC().Format("2006") // rsa2026, ed2026
			}
			if err := mailauth.CheckDKIMNames(domain, selector); err != nil {
				return err
			}
			key, err := mailauth.GenerateDKIMKey(algo)
			if err != nil {
				return err
			}
			path := mailauth.DKIMKeyPath(cfg.Path(cfg.DKIM.KeyDir), domain, selector)
			if err := mailauth.WriteDKIMKey(path, key); err != nil {
				return fmt.Errorf("write key: %w", err)
			}
			rec, err := mailauth.DKIMRecord(key)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "; key written to %s\n", path)
			fmt.Fprintf(out, "; publish this record, then add the selector to the configuration:\n")
			fmt.Fprintf(out, ";   [dkim.domains.%q]\n;   selectors = [%q]\n", domain, selector)
			fmt.Fprintln(out, mailauth.DKIMZoneLine(domain, selector, rec))
			return nil
		},
	}
	keygen.Flags().StringVar(&selector, "selector", "", "selector (default: rsa or ed and the year, e.g. rsa2026, ed2026)")
	keygen.Flags().StringVar(&algo, "algo", "rsa", "key algorithm: rsa (2048 bits) or ed25519")
	check := &cobra.Command{
		Use:   "check DOMAIN",
		Short: "Look up the DNS record of each configured selector of DOMAIN and confirm it matches the key",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := config.Load(file)
			if err != nil {
				return err
			}
			domain := strings.ToLower(strings.TrimSuffix(args[0], "."))
			keys, err := app.LoadDKIMKeys(cfg)
			if err != nil {
				return err
			}
			if len(keys[domain]) == 0 {
				return fmt.Errorf("no selectors configured for %s (add [dkim.domains.%q] selectors = [...])", domain, domain)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			r := dns.System(cfg.Outbound.DNSServers)
			bad := 0
			for _, k := range keys[domain] {
				st := mailauth.CheckDKIMRecord(ctx, r, domain, k.Selector, k.Signer)
				if st.OK {
					fmt.Fprintf(cmd.OutOrStdout(), "%s: OK (%s key matches the published record)\n", st.Name, k.Algo())
					continue
				}
				bad++
				fmt.Fprintf(cmd.OutOrStdout(), "%s: FAIL: %s\n", st.Name, st.Problem)
				if rec, err := mailauth.DKIMRecord(k.Signer); err == nil {
					fmt.Fprintf(cmd.OutOrStdout(), "  expected: %s\n", mailauth.DKIMZoneLine(domain, k.Selector, rec))
				}
			}
			if bad > 0 {
				return fmt.Errorf("%d of %d selector(s) not published correctly", bad, len(keys[domain]))
			}
			return nil
		},
	}
	cmd.AddCommand(keygen, check)
	return cmd
}
