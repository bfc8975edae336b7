package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/spf13/cobra"

	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/internal/daemon"
	"github.com/tcpshadow/tcpshadow/internal/logfile"
)

type interceptOptions struct {
	iface         string
	filter        string
	snaplen       int
	listen        string
	allow         []string
	insecure      bool
	flushDelay    time.Duration
	maxFlows      int
	maxPeerFlows  int
	maxHandshakes int
	maxConnsPerIP int
	maxCPU        int
	maxMemory     string
	tlsCert       string
	tlsKey        string
	local         localOptions // two hosts: the agent on the shadow
	daemon        daemonOptions
	from          origin // which options the config file set
}

// interceptConfig is what the intercept command runs: the agent's
// validated configuration, and the log file the command opens for it.
type interceptConfig struct {
	daemon.AgentConfig
	logFile string
}

func (c *interceptConfig) logPath() string { return c.logFile }

func newInterceptCmd(g *globalOptions) *cobra.Command {
	return newInterceptCmdWith(g, &interceptOptions{})
}

func newInterceptCmdWith(g *globalOptions, o *interceptOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "intercept --iface IFACE --secret-file FILE [--filter 'tcp and src port 80'] [flags] | intercept --local --to POOL [--to POOL6] --secret-file FILE [flags]",
		Short: "Relay the shadow's replies to copy daemons (runs on the assist host, or with --local on the shadow)",
		Long: fmt.Sprintf(`intercept captures the shadow's replies, which the shadow routes to this host
where they die (keep ip_forward off here), and relays their IP and TCP headers
to the copy daemon that registered each flow, over the control channel (TCP
%d by default). Copy daemons must prove the secret of --secret-file, which
then authenticates every frame (or run the channel over TLS with --tls-cert):
the agent refuses to start without one unless --insecure-no-auth is given.
A copy daemon may register only flows within the client pools it announces,
and never one another daemon holds.

With --local the agent runs on the shadow host itself (two hosts, no assist):
it installs nftables rules (table inet tcpshadow_local) that queue every packet
this host sends to a --to pool to an NFQUEUE it reads and drops, instead of
capturing on --iface. The rules have no bypass: while no agent reads the queue
the kernel drops those packets, so none leaves the host. They are removed at
exit, and a table a killed run left is replaced at start. The host needs a
route for each pool (any: the rule takes the packets first) and the agent
CAP_NET_ADMIN.

The secret file holds one line, the secret every copy daemon shares, or
several lines NAME SECRET, one secret per copy daemon (by its --name), so
that no prod host's secret lets it pass for the agent to the others.

Every flag can also be set in the [intercept] table of a TOML file given
with --config (see tcpshadow config check); flags on the command line win.
SIGHUP reopens --log-file and --dump, for logrotate. The dump holds every
reply the agent captures, relayed or not, as captured: the first 256 bytes,
with the length on the wire in each record.`, wire.DefaultPort),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDaemon(cmd, g, "intercept", &o.daemon, &o.from, o.config,
				func(ctx context.Context, cfg *interceptConfig, log *slog.Logger, lf *logfile.File) error {
					return o.from.explain(daemon.RunAgent(ctx, cfg.AgentConfig, log, lf), o.fieldFlags())
				})
		},
	}
	def := daemon.DefaultAgentConfig()
	f := cmd.Flags()
	f.StringVarP(&o.iface, "iface", "i", "", "interface the shadow's replies arrive on (not with --local)")
	f.StringVar(&o.filter, "filter", def.Capture.Filter, "BPF filter for the shadow's replies, e.g. 'tcp and src port 80' (default: all TCP; the agent's own port is always left out, and replies outside the copy daemons' pools are dropped)")
	f.IntVar(&o.snaplen, "snaplen", def.Capture.SnapLen, "bytes captured of each reply: the default covers every reply prefix a copy daemon may ask for; a copy daemon comparing HTTP/2 needs whole replies (262144)")
	f.StringVarP(&o.listen, "listen", "l", def.Listen, "address to serve copy daemons on")
	f.StringSliceVar(&o.allow, "allow", nil, "copy daemon addresses or prefixes allowed to connect (default: any)")
	f.BoolVar(&o.insecure, "insecure-no-auth", def.Agent.InsecureNoAuth, "run without --secret-file: anyone who reaches the agent may register flows and read their replies (tests only)")
	f.StringVar(&o.tlsCert, "tls-cert", "", "serve the control channel over TLS with this PEM certificate (with --tls-key)")
	f.StringVar(&o.tlsKey, "tls-key", "", "the PEM private key of --tls-cert")
	f.DurationVar(&o.flushDelay, "flush-delay", def.Agent.FlushDelay, "longest a reply header waits to be batched")
	f.IntVar(&o.maxFlows, "max-flows", def.Agent.MaxFlows, "flow table size bound, every copy daemon's together")
	f.IntVar(&o.maxPeerFlows, "max-peer-flows", def.Agent.MaxPeerFlows, "flows one copy daemon may hold")
	f.IntVar(&o.maxHandshakes, "max-handshakes", def.Agent.MaxHandshakes, "connections in their handshake at once; more are closed")
	f.IntVar(&o.maxConnsPerIP, "max-conns-per-addr", def.Agent.MaxConnsPerAddr, "connections from one address at once; more are closed")
	f.IntVar(&o.maxCPU, "max-cpu", def.MaxCPU, "CPUs the agent may use at once (GOMAXPROCS); default half the host's")
	f.StringVar(&o.maxMemory, "max-memory", formatSize(def.MaxMemory), "memory budget: Go heap soft limit; a quarter of it bounds the flow table")
	o.local.addFlags(f)
	o.daemon.addFlags(f, daemonHelp{
		dumped: "every reply captured (its first 256 bytes)",
		secret: "the secret copy daemons must prove: one line shared by all, or lines NAME SECRET, one per copy daemon (required unless --insecure-no-auth)",
		peer:   "copy daemons",
	}, daemonDefaults{capture: def.Capture, statsInterval: def.StatsInterval, dump: def.Dump})
	return cmd
}

// fieldFlags maps the agent's config fields to the flags setting them,
// for errors to name what the user wrote.
func (o *interceptOptions) fieldFlags() map[string]fieldFlag {
	m := map[string]fieldFlag{
		"Capture.Interface":  {flag: "iface"},
		"Capture.Filter":     {flag: "filter"},
		"Capture.SnapLen":    {flag: "snaplen"},
		"Listen":             {flag: "listen"},
		"Local.Pools":        {flag: "to"},
		"Local.Queue.Num":    {flag: "queue-num"},
		"Local.Queue.MaxLen": {flag: "queue-len"},
		"Local.TunnelPort":   {flag: "tunnel-port"},
		"Local.Tunnel":       {flag: "tunnel"},
		"Agent.FlushDelay":   {flag: "flush-delay"},
		"Agent.MaxFlows":     {flag: "max-flows"},
		"Agent.Secret":       {flag: "secret-file"},
		"Agent.Secrets":      {flag: "secret-file"},
		"MaxCPU":             {flag: "max-cpu"},
		"MaxMemory":          {flag: "max-memory", given: o.maxMemory},
	}
	o.daemon.addFieldFlags(m)
	return m
}

// config validates the options; every error names its flag, or its key
// in the config file when the file set it.
func (o *interceptOptions) config() (*interceptConfig, error) {
	n := o.from.name
	local, err := o.local.config(n, o.iface, o.filter)
	if err != nil {
		return nil, err
	}
	if o.iface == "" && local == nil {
		return nil, fmt.Errorf("%s is required", o.from.missing("iface"))
	}
	if _, port, err := net.SplitHostPort(o.listen); err != nil {
		return nil, fmt.Errorf("%s %q: want [ADDR]:PORT: %w", n("listen"), o.listen, err)
	} else if err := checkPort(port); err != nil {
		// Checked now: the listener is opened only after the capture.
		return nil, fmt.Errorf("%s %q: %w", n("listen"), o.listen, err)
	}
	var allow []netip.Prefix
	for i, s := range o.allow {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("%s %q: want an address or a prefix", o.from.item("allow", i), s)
			}
			p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		}
		allow = append(allow, p)
	}
	var tlsCfg *tls.Config
	switch {
	case o.tlsCert != "" && o.tlsKey != "":
		cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
		if err != nil {
			return nil, fmt.Errorf("%s, %s: %w", n("tls-cert"), n("tls-key"), err)
		}
		tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	case o.tlsCert != "":
		return nil, fmt.Errorf("%s needs %s", n("tls-cert"), n("tls-key"))
	case o.tlsKey != "":
		return nil, fmt.Errorf("%s needs %s", n("tls-key"), n("tls-cert"))
	}
	for _, c := range []struct {
		flag string
		v    int
	}{{"max-peer-flows", o.maxPeerFlows}, {"max-handshakes", o.maxHandshakes}, {"max-conns-per-addr", o.maxConnsPerIP}} {
		if c.v < 1 {
			return nil, fmt.Errorf("%s %d: want at least 1", n(c.flag), c.v)
		}
	}
	maxMemory, err := parseSize(o.maxMemory)
	if err != nil {
		return nil, fmt.Errorf("%s %q: want a size of at least 16MiB, such as 512MiB or 2GiB", n("max-memory"), o.maxMemory)
	}
	shared, err := o.daemon.read(o.from, true)
	if err != nil {
		return nil, err
	}
	if o.insecure && (shared.secret != nil || shared.secrets != nil) {
		return nil, fmt.Errorf("%s and %s: choose one", n("insecure-no-auth"), n("secret-file"))
	}

	cfg := daemon.DefaultAgentConfig()
	cfg.Capture.Interface, cfg.Capture.Filter, cfg.Capture.SnapLen, cfg.Local = o.iface, o.filter, o.snaplen, local
	o.daemon.setCapture(&cfg.Capture)
	a := &cfg.Agent
	a.Name, a.Secret, a.Secrets, a.InsecureNoAuth = shared.name, shared.secret, shared.secrets, o.insecure
	a.TLS, a.Allow, a.FlushDelay, a.MaxFlows = tlsCfg, allow, o.flushDelay, o.maxFlows
	a.MaxPeerFlows, a.MaxHandshakes, a.MaxConnsPerAddr = o.maxPeerFlows, o.maxHandshakes, o.maxConnsPerIP
	cfg.Listen, cfg.MaxCPU, cfg.MaxMemory = o.listen, o.maxCPU, maxMemory
	cfg.MetricsAddr, cfg.Pprof, cfg.StatsInterval, cfg.Dump = o.daemon.metricsAddr, o.daemon.pprof, o.daemon.statsInterval, o.daemon.dump.config()
	if err := cfg.Validate(); err != nil {
		var fe *daemon.FieldError
		if errors.As(err, &fe) && fe.Field == "Agent.Secret" {
			return nil, fmt.Errorf("%s is required: without a secret anyone who reaches the agent could register flows and read "+
				"their replies (%s runs it so on purpose, for tests)", o.from.missing("secret-file"), n("insecure-no-auth"))
		}
		return nil, o.from.explain(err, o.fieldFlags())
	}
	return &interceptConfig{AgentConfig: cfg, logFile: o.daemon.logFile}, nil
}
