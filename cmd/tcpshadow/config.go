package main

import (
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tcpshadow/tcpshadow/intercept/divert"
	"github.com/tcpshadow/tcpshadow/internal/conffile"
	"github.com/tcpshadow/tcpshadow/internal/pcapdump"
)

func newConfigCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config check FILE",
		Short: "Check a configuration file",
		Long: `The daemons read a TOML file given with --config: a [copy] table for
tcpshadow copy, an [intercept] table for tcpshadow intercept, and the
logging keys (log_format, log_level, log_file) at the top level. Each key is
the flag's name with '_' for '-'; flags on the command line override the
file. See scripts/tcpshadow.example.toml.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	var clients []string
	check := &cobra.Command{
		Use:   "check FILE [--client ADDR...]",
		Short: "Validate a config file and print the effective configuration, defaults included",
		Long: `check validates every table the file has exactly as the daemon would at
startup (the secret file is read, directories of the log and dump files must
exist) and prints the configuration the daemon would run with. It exits
non-zero with an error naming the key, such as copy.map[1], on an invalid
file.

With --client, it also prints the forged address the copy daemon gives that
client (the mapping is a pure function of the address, client_pool and
pool_seed), to follow one client's sessions on the shadow and assist hosts:
the forged source port is the client's own unless two sessions collide.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return configCheck(args[0], clients, cmd.OutOrStdout())
		},
	}
	check.Flags().StringSliceVar(&clients, "client", nil, "also print the forged address of this client address (repeatable)")
	cmd.AddCommand(check)
	return cmd
}

// configCheck validates the file at path for each daemon it has a table
// for and writes the effective configuration to w, with the forged
// address of each of clients. Nothing is written unless the whole file is
// valid.
func configCheck(path string, clients []string, w io.Writer) error {
	var addrs []netip.Addr
	for _, c := range clients {
		a, err := netip.ParseAddr(c)
		if err != nil {
			return fmt.Errorf("--client %q: want an IPv4 or IPv6 address", c)
		}
		addrs = append(addrs, a.Unmap())
	}
	f, err := conffile.Load(path)
	if err != nil {
		return err
	}
	if err := checkTables(f); err != nil {
		return err
	}
	var tables []string
	for _, t := range fileTables {
		if f.Has(t) {
			tables = append(tables, t)
		}
	}
	if len(tables) == 0 {
		return fmt.Errorf("config %s: %w", path, errNoTable)
	}
	if len(addrs) > 0 && !f.Has("copy") {
		return fmt.Errorf("--client: config %s has no [copy] table to forge addresses with", path)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# %s is valid. The effective configuration, defaults included:\n", path)
	for i, table := range tables {
		cmd, g, opts := daemonCmd(table)
		from, err := applyFile(f, cmd.Flags(), table)
		if err != nil {
			return err
		}
		if err := g.checkLog(from); err != nil {
			return err
		}
		var derived [][2]string
		switch o := opts.(type) {
		case *copyOptions:
			o.from = from
			cfg, err := o.config()
			if err != nil {
				return err
			}
			derived = copyDerived(o, cfg)
			for _, a := range addrs {
				derived = append(derived, [2]string{"client " + a.String(), forgedDerived(cfg, a)})
			}
		case *interceptOptions:
			o.from = from
			cfg, err := o.config()
			if err != nil {
				return err
			}
			derived = interceptDerived(cfg)
		}
		if i == 0 {
			b.WriteString("\n")
			writeKeys(&b, cmd.Flags(), topLevelFlags, from)
		}
		fmt.Fprintf(&b, "\n[%s]\n", table)
		writeKeys(&b, cmd.Flags(), tableFlags(table), from)
		b.WriteString("# derived from the above:\n")
		tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
		for _, d := range derived {
			fmt.Fprintf(tw, "#   %s\t%s\n", d[0], d[1])
		}
		tw.Flush()
	}
	_, err = io.WriteString(w, b.String())
	return err
}

// checkTables rejects top-level tables no daemon reads.
func checkTables(f *conffile.File) error {
	for _, t := range f.Tables() {
		if !slices.Contains(fileTables, t) {
			return fmt.Errorf("config %s: unknown table [%s]; want [copy] and/or [intercept]", f.Path, t)
		}
	}
	return nil
}

// writeKeys writes flags as TOML keys with their current values, marking
// the ones the file did not set.
func writeKeys(w io.Writer, fs *pflag.FlagSet, flags []string, from origin) {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 4, 1, ' ', 0)
	for _, name := range flags {
		fl := fs.Lookup(name)
		note := "" // an empty last cell keeps the column aligned
		if _, set := from.keys[name]; !set {
			note = "# default"
		}
		fmt.Fprintf(tw, "%s\t= %s\t%s\n", conffile.KeyName("", name), conffile.Value(fl), note)
	}
	tw.Flush()
	for _, line := range strings.SplitAfter(b.String(), "\n") {
		io.WriteString(w, strings.TrimRight(line, " \n"))
		if strings.HasSuffix(line, "\n") {
			io.WriteString(w, "\n")
		}
	}
}

func dumpDerived(d pcapdump.Config) string {
	if d.Path == "" {
		return "off"
	}
	return fmt.Sprintf("%s, rotated at %d MiB, %d files kept", d.Path, d.MaxBytes>>20, d.Files)
}

func authDerived(secret []byte, none string) string {
	if len(secret) == 0 {
		return "none: " + none
	}
	return fmt.Sprintf("shared secret of %d bytes; every frame authenticated (plain TCP) or the channel bound to TLS", len(secret))
}

func copyDerived(o *copyOptions, cfg *copyConfig) [][2]string {
	pool := "none: the shadow sees the real client addresses"
	if cfg.Engine.Pool != nil {
		var ps []string
		for _, s := range o.pools {
			if p, err := netip.ParsePrefix(s); err == nil {
				ps = append(ps, p.Masked().String())
			}
		}
		pool = strings.Join(ps, ", ")
	}
	var maps []string
	for _, m := range cfg.Engine.Maps {
		local := m.Local.String()
		if !m.Local.Addr().IsValid() {
			local = fmt.Sprintf("any:%d", m.Local.Port())
		}
		share := ""
		if m.Of > 1 {
			share = fmt.Sprintf(" (target %d of %d, by flow hash)", m.Share+1, m.Of)
		}
		maps = append(maps, local+" → "+m.Target.String()+share)
	}
	return [][2]string{
		{"copies", strings.Join(maps, ", ")},
		{"capture filter", cfg.CaptureConfig().Filter},
		{"agent address", cfg.Client.Addr},
		{"announced name", cfg.Client.Name},
		{"authentication", authDerived(cfg.Client.Secret, "the agent must not ask for a secret")},
		{"forged clients", pool},
		{"log", logDerived(cfg.logFile)},
		{"dump", dumpDerived(cfg.Dump)},
	}
}

func interceptDerived(cfg *interceptConfig) [][2]string {
	allow := "any address"
	if len(cfg.Agent.Allow) > 0 {
		var ps []string
		for _, p := range cfg.Agent.Allow {
			ps = append(ps, p.String())
		}
		allow = strings.Join(ps, ", ")
	}
	auth := authDerived(cfg.Agent.Secret, "INSECURE: any copy daemon allowed to connect is accepted, and frames are not authenticated")
	if len(cfg.Agent.Secrets) > 0 {
		names := make([]string, 0, len(cfg.Agent.Secrets))
		for n := range cfg.Agent.Secrets {
			names = append(names, n)
		}
		slices.Sort(names)
		auth = "a secret per copy daemon: " + strings.Join(names, ", ")
	}
	capture := [2]string{"capture filter", cfg.CaptureConfig().Filter}
	if l := cfg.Local; l != nil {
		var ps []string
		for _, p := range l.Pools {
			ps = append(ps, p.String())
		}
		capture = [2]string{"two hosts", fmt.Sprintf("this host's packets to %s diverted to NFQUEUE %d (at most %d held), nftables table inet %s",
			strings.Join(ps, ", "), l.Queue.Num, l.Queue.MaxLen, divert.TableName)}
	}
	return [][2]string{
		{"listen", cfg.Listen},
		capture,
		{"copy daemons allowed", allow},
		{"announced name", cfg.Agent.Name + " (to authenticated copy daemons only)"},
		{"authentication", auth},
		{"log", logDerived(cfg.logFile)},
		{"dump", dumpDerived(cfg.Dump)},
	}
}

// forgedDerived says which address the copy daemon forges for client a.
func forgedDerived(cfg *copyConfig, a netip.Addr) string {
	p := cfg.Engine.Pool
	switch {
	case p == nil:
		return "not forged: no client_pool"
	case !p.Has(a):
		return "not forged: no client_pool prefix of its family"
	}
	if _, slots := p.Slot(); slots > 1 {
		slot, _ := p.Slot()
		return fmt.Sprintf("forged as %s (pool slot %d/%d)", p.Map(a), slot, slots)
	}
	return "forged as " + p.Map(a).String()
}

func logDerived(path string) string {
	if path == "" {
		return "standard error"
	}
	return path + ", reopened on SIGHUP"
}
