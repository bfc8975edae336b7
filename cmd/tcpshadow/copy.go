package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tcpshadow/tcpshadow/capture"
	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/internal/compare"
	"github.com/tcpshadow/tcpshadow/internal/daemon"
	"github.com/tcpshadow/tcpshadow/internal/logfile"
	"github.com/tcpshadow/tcpshadow/rewrite"
	"github.com/tcpshadow/tcpshadow/tcpstate"
)

// copyOptions are the copy command's flags as given.
type copyOptions struct {
	iface        string
	capture      string // a mirror session's URL, replacing iface
	send         string
	transport    string
	tunnelPort   int
	maps         []string
	agent        string
	tlsCA        string
	tlsName      string
	pools        []string
	filter       string
	workers      int
	noPacing     bool
	trustInbound bool
	mss          int
	handshake    time.Duration
	response     time.Duration
	drain        time.Duration
	idle         time.Duration
	linger       time.Duration
	quiet        time.Duration
	maxSessBytes int
	maxSessions  int
	snaplen      int
	poolSeed     uint64
	poolSlot     string
	maxCPU       int
	maxMemory    string
	// comparison
	comparePrefix   int
	protocols       []string
	divergenceLog   string
	noDivergenceLog bool
	// recording, for replays
	recordDir   string
	recordSize  string
	recordAge   time.Duration
	recordFiles int
	// load-test controls, changeable on SIGHUP
	sample     string
	sampleSeed uint64
	multiply   int
	ramp       time.Duration
	maxNew     int
	daemon     daemonOptions
	from       origin // which options the config file set
}

// copyConfig is what the copy command runs: the daemon's validated
// configuration, and the log file the command opens for it.
type copyConfig struct {
	daemon.CopyConfig
	logFile string
}

func (c *copyConfig) logPath() string { return c.logFile }

func newCopyCmd(g *globalOptions) *cobra.Command { return newCopyCmdWith(g, &copyOptions{}) }

func newCopyCmdWith(g *globalOptions, o *copyOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "copy --iface IFACE --map [LOCAL:]PORT-TARGET:PORT --intercept AGENT [flags]",
		Short: "Copy the traffic prod receives to the shadow (runs on the prod host)",
		Long: `copy captures client packets arriving at prod, rewrites them toward the shadow
(destination, optionally a forged client address from a pool, ACKs translated
into the shadow's sequence space) and plays the client's side of TCP, learning
the shadow's replies from the intercept agent.

On a mirror target (nothing of tcpshadow on prod), --capture replaces
--iface: vxlan://ADDR[:PORT][?vni=N] (AWS VPC Traffic Mirroring, switches)
or geneve://ADDR[:PORT][?vni=N] (GCP Packet Mirroring, AWS Gateway Load
Balancer, VXLAN inside it too). --send datalink sends at the datalink to the
next hop's MAC address, past the host's netfilter rules and conntrack.
--transport udp seals every packet into a UDP datagram to the agent on the
shadow host (intercept --local), for networks that drop forged sources.

Maps (-x, repeatable or comma-separated):
  80-198.18.1.2:80                    port 80 on any local address
  198.18.0.1:80-198.18.1.2:8080       one local address only
  [2001:2::1]:80-[2001:2:0:1::2]:80   IPv6
  80-198.18.1.2:80,198.18.1.3:80      sessions spread over two targets by flow hash

Load tests: --sample copies a share of the client connections (each whole
or not at all, chosen by a hash of the client's address and port and
--sample-seed), --multiply sends each copied connection N times from N
forged tuples, --ramp raises the copied share linearly from 0 over a
duration, --max-new-sessions caps the shadow sessions started a second.
SIGHUP re-reads these four from the --config file (flags on the command
line still win) and applies them to connections that open from then on;
the values in effect are exported as tcpshadow_copy_control{control}.

Every flag can also be set in the [copy] table of a TOML file given with
--config (see tcpshadow config check); flags on the command line win.
SIGHUP reopens --log-file and --dump, for logrotate.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDaemon(cmd, g, "copy", &o.daemon, &o.from, o.config,
				func(ctx context.Context, cfg *copyConfig, log *slog.Logger, lf *logfile.File) error {
					cfg.Reload = o.reloader(cmd.Flags())
					return o.from.explain(daemon.RunCopy(ctx, cfg.CopyConfig, log, lf), o.fieldFlags())
				})
		},
	}
	def := daemon.DefaultCopyConfig()
	f := cmd.Flags()
	f.StringVarP(&o.iface, "iface", "i", "", "interface to capture client packets on (\"any\" for all)")
	f.StringVar(&o.capture, "capture", "", "read a traffic-mirroring session instead of --iface: vxlan://ADDR[:PORT][?vni=N] or geneve://ADDR[:PORT][?vni=N]")
	f.StringVar(&o.send, "send", string(def.Send), "how packets leave for the shadow: raw (IP sockets, through the host's netfilter and conntrack) or datalink (to the next hop's MAC, past them)")
	f.StringVar(&o.transport, "transport", string(def.Transport), "how packets reach the shadow: direct (forged packets on the network) or udp (sealed in datagrams from this host's own address to the agent on the shadow host, intercept --local; needs --secret-file and --client-pool)")
	f.IntVar(&o.tunnelPort, "tunnel-port", def.TunnelPort, "--transport udp: the agent's tunnel port on the --intercept host")
	f.StringSliceVarP(&o.maps, "map", "x", nil, "what to copy where: [LOCALADDR:]PORT-TARGETADDR:PORT (repeatable)")
	f.StringVarP(&o.agent, "intercept", "s", "", fmt.Sprintf("intercept agent address HOST[:PORT] (default port %d)", wire.DefaultPort))
	f.StringVar(&o.tlsCA, "tls-ca", "", "talk to the agent over TLS, verifying its certificate against these PEM CA certificates")
	f.StringVar(&o.tlsName, "tls-server-name", "", "the name the agent's certificate must carry (default: the host of --intercept)")
	f.StringSliceVarP(&o.pools, "client-pool", "c", nil, "forge client addresses from this prefix (one per address family)")
	f.StringVar(&o.filter, "filter", def.Capture.Filter, "BPF filter replacing the one built from the maps")
	f.IntVar(&o.workers, "workers", def.Engine.Workers, "datapath workers, flows sharded over them (default: --max-cpu)")
	f.IntVar(&o.maxCPU, "max-cpu", def.MaxCPU, "CPUs the daemon may use at once (GOMAXPROCS); default half the host's, to leave production alone")
	f.StringVar(&o.maxMemory, "max-memory", formatSize(def.MaxMemory), "memory budget: Go heap soft limit; half of it may hold buffered client data, and sessions are shed gradually past half of either budget")
	f.BoolVar(&o.noPacing, "no-pacing", def.Engine.NoPacing, "send requests as captured instead of after the shadow answered the previous one")
	f.BoolVar(&o.trustInbound, "trust-inbound", def.Engine.TrustInbound, "copy what clients send without waiting for prod to acknowledge it, for hosts where prod's outbound packets cannot be captured (spoofed and firewalled packets then reach the shadow too)")
	f.IntVar(&o.mss, "mss", def.Engine.MSS, "largest segment sent to the shadow; larger captured packets are split")
	f.DurationVar(&o.handshake, "handshake-timeout", def.Engine.HandshakeTimeout, "give up a session whose SYN the shadow does not answer")
	f.DurationVar(&o.response, "response-timeout", def.Engine.ResponseTimeout, "longest a request waits for the shadow's answer before the next goes anyway (the wait follows prod's response times, up to this)")
	f.DurationVar(&o.drain, "drain-timeout", def.Engine.DrainTimeout, "longest what prod accepted before a client's FIN or RST may go without reaching the shadow (each ACK of the shadow restarts it)")
	f.DurationVar(&o.idle, "idle-timeout", def.Engine.IdleTimeout, "end sessions idle this long")
	f.DurationVar(&o.linger, "linger", def.Engine.Linger, "keep ended sessions this long to reset late replies")
	f.DurationVar(&o.quiet, "quiet-period", def.Engine.QuietPeriod, "shadow silence that completes an answer shorter than prod's")
	f.IntVar(&o.maxSessBytes, "max-session-bytes", def.Engine.MaxSessionBytes, "client data buffered per session before it is cut")
	f.IntVar(&o.maxSessions, "max-sessions", def.Engine.MaxSessions, "sessions held at once; new ones beyond are shed")
	f.IntVar(&o.snaplen, "snaplen", def.Capture.SnapLen, "capture snap length")
	f.IntVar(&o.comparePrefix, "compare-prefix", def.Engine.ComparePrefix, fmt.Sprintf("compare prod's answers with the shadow's: the first bytes of each response kept per side (0 turns comparison off, at most %d); served at /report on --metrics", compare.MaxPrefix))
	f.StringSliceVar(&o.protocols, "protocol", nil, "a map's protocol for comparison: PROTO for every map, PORT=PROTO or MAP=PROTO for some (http, http2, redis, postgres, mysql, raw; repeatable; default: detected)")
	f.StringVar(&o.divergenceLog, "divergence-log", def.Compare.DivergenceLog, "JSON lines of requests the shadow answered otherwise than prod (size-bounded, rotated); the default is skipped if its directory is missing")
	f.BoolVar(&o.noDivergenceLog, "no-divergence-log", false, "write no divergence log")
	f.Uint64Var(&o.poolSeed, "pool-seed", 0, "seed of the client-address mapping into the pool")
	f.StringVar(&o.poolSlot, "pool-slot", "0/1", "SLOT/SLOTS: forge only from this share of the pool, so that copy daemons sharing it (each its own slot, the same SLOTS) never forge the same address")
	f.StringVar(&o.recordDir, "record", "", "write what the captures read (both directions of the maps' traffic) to rotating pcap files in this directory, for tcpshadow replay (off if empty)")
	f.StringVar(&o.recordSize, "record-size", formatSize(def.Record.MaxBytes), "start a new recording file when the current one would grow past this size (tcpdump -C)")
	f.DurationVar(&o.recordAge, "record-age", def.Record.MaxAge, "start a new recording file when the current one is this old (tcpdump -G; 0: no age bound)")
	f.IntVar(&o.recordFiles, "record-files", def.Record.MaxFiles, "recording files kept, the oldest removed (tcpdump -W)")
	ctl := def.Engine.Controls
	f.StringVar(&o.sample, "sample", formatShare(ctl.Sample), "copy this share of the client connections, each whole or not at all, chosen by a hash of the client's address and port (30% or 0.3; SIGHUP re-reads it)")
	f.Uint64Var(&o.sampleSeed, "sample-seed", ctl.SampleSeed, "seed of --sample's hash: daemons with the same seed choose the same connections")
	f.IntVar(&o.multiply, "multiply", ctl.Multiply, fmt.Sprintf("send each copied connection to the shadow this many times, each copy from a forged tuple of its own (1..%d; SIGHUP re-reads it)", tcpstate.MaxMultiply))
	f.DurationVar(&o.ramp, "ramp", ctl.Ramp, "raise the copied share linearly from 0 to --sample over this long after the start, and from the share then after SIGHUP changes --sample (0: at once)")
	f.IntVar(&o.maxNew, "max-new-sessions", int(ctl.MaxNewSessions), "start at most this many shadow sessions a second, each copy counting; sessions beyond are skipped, counted (0: no cap; SIGHUP re-reads it)")
	o.daemon.addFlags(f, daemonHelp{
		dumped: "every packet sent to the shadow",
		secret: "the control channel's shared secret",
		peer:   "the agent",
	}, daemonDefaults{capture: def.Capture, statsInterval: def.StatsInterval, dump: def.Dump})
	return cmd
}

// fieldFlags maps the copy daemon's config fields to the flags setting
// them, for errors to name what the user wrote.
func (o *copyOptions) fieldFlags() map[string]fieldFlag {
	m := map[string]fieldFlag{
		"Capture.Interface":              {flag: "iface"},
		"Capture.SnapLen":                {flag: "snaplen"},
		"Mirror.Proto":                   {flag: "capture", given: o.capture},
		"Mirror.Addr":                    {flag: "capture", given: o.capture},
		"Mirror.VNI":                     {flag: "capture", given: o.capture},
		"Engine.TrustInbound":            {flag: "trust-inbound"},
		"Send":                           {flag: "send", given: o.send},
		"Transport":                      {flag: "transport", given: o.transport},
		"TunnelPort":                     {flag: "tunnel-port"},
		"Client.Addr":                    {flag: "intercept", given: o.agent},
		"MaxCPU":                         {flag: "max-cpu"},
		"MaxMemory":                      {flag: "max-memory", given: o.maxMemory},
		"Engine.Maps":                    {flag: "map", given: o.maps},
		"Engine.Workers":                 {flag: "workers"},
		"Engine.MSS":                     {flag: "mss"},
		"Engine.HandshakeTimeout":        {flag: "handshake-timeout"},
		"Engine.ResponseTimeout":         {flag: "response-timeout"},
		"Engine.DrainTimeout":            {flag: "drain-timeout"},
		"Engine.IdleTimeout":             {flag: "idle-timeout"},
		"Engine.Linger":                  {flag: "linger"},
		"Engine.QuietPeriod":             {flag: "quiet-period"},
		"Engine.MaxSessionBytes":         {flag: "max-session-bytes"},
		"Engine.MaxSessions":             {flag: "max-sessions", given: o.maxSessions},
		"Engine.ComparePrefix":           {flag: "compare-prefix"},
		"Compare.Protocols":              {flag: "protocol", given: o.protocols},
		"Compare":                        {flag: "divergence-log", given: o.divergenceLog},
		"Record.Dir":                     {flag: "record"},
		"Record.MaxBytes":                {flag: "record-size", given: o.recordSize},
		"Record.MaxAge":                  {flag: "record-age"},
		"Record.MaxFiles":                {flag: "record-files"},
		"Engine.Controls.Sample":         {flag: "sample", given: o.sample},
		"Engine.Controls.Multiply":       {flag: "multiply"},
		"Engine.Controls.Ramp":           {flag: "ramp"},
		"Engine.Controls.MaxNewSessions": {flag: "max-new-sessions"},
	}
	o.daemon.addFieldFlags(m)
	return m
}

// liveFlags are the flags SIGHUP re-reads from the config file.
var liveFlags = []string{"sample", "multiply", "ramp", "max-new-sessions"}

// reloader returns how SIGHUP re-reads the controls: the config file
// applied to a fresh copy command under the live flags given on fs's
// command line, which still win, as at the start. nil without a file.
func (o *copyOptions) reloader(fs *pflag.FlagSet) func() (tcpstate.Controls, error) {
	path := o.daemon.configFile
	if path == "" {
		return nil
	}
	given := make(map[string]string)
	for _, name := range append(slices.Clone(liveFlags), "sample-seed") {
		f := fs.Lookup(name)
		if _, fromFile := o.from.keys[name]; f != nil && f.Changed && !fromFile {
			given[name] = f.Value.String()
		}
	}
	return func() (tcpstate.Controls, error) {
		cmd, _, opts := daemonCmd("copy")
		fresh := opts.(*copyOptions)
		for name, v := range given {
			if err := cmd.Flags().Set(name, v); err != nil {
				return tcpstate.Controls{}, err
			}
		}
		from, err := applyConfigFile(cmd.Flags(), "copy", path)
		if err != nil {
			return tcpstate.Controls{}, err
		}
		fresh.from = from
		return fresh.controls()
	}
}

// controls returns the load-test controls the options hold.
func (o *copyOptions) controls() (tcpstate.Controls, error) {
	n := o.from.name
	share, err := parseShare(o.sample)
	if err != nil {
		return tcpstate.Controls{}, fmt.Errorf("%s %q: %w", n("sample"), o.sample, err)
	}
	c := tcpstate.Controls{Sample: share, SampleSeed: o.sampleSeed, Multiply: o.multiply, Ramp: o.ramp, MaxNewSessions: float64(o.maxNew)}
	if err := c.Validate(); err != nil {
		var fe *tcpstate.FieldError
		if errors.As(err, &fe) {
			err = &daemon.FieldError{Field: "Engine." + fe.Field, Value: fe.Value, Err: fe.Err}
		}
		return tcpstate.Controls{}, o.from.explain(err, o.fieldFlags())
	}
	return c, nil
}

// config validates the options; every error names its flag, or its key
// in the config file when the file set it.
func (o *copyOptions) config() (*copyConfig, error) {
	n := o.from.name
	if o.iface == "" && o.capture == "" {
		return nil, fmt.Errorf("%s is required (or %s on a mirror target)", o.from.missing("iface"), n("capture"))
	}
	if o.iface != "" && o.capture != "" {
		return nil, fmt.Errorf("%s or %s, not both: a mirror session carries what the interface would", n("iface"), n("capture"))
	}
	mirror := capture.MirrorConfig{VNI: capture.AnyVNI}
	if o.capture != "" {
		var err error
		if mirror, err = capture.ParseMirrorURL(o.capture); err != nil {
			return nil, fmt.Errorf("%s: %w", n("capture"), err)
		}
	}
	if len(o.maps) == 0 {
		return nil, fmt.Errorf("%s is required: what to copy where, e.g. 80-198.18.1.2:80", o.from.missing("map"))
	}
	maps, err := parseMaps(o.maps, func(i int) string { return o.from.item("map", i) })
	if err != nil {
		return nil, err
	}
	controls, err := o.controls()
	if err != nil {
		return nil, err
	}
	if o.agent == "" {
		return nil, fmt.Errorf("%s is required: the intercept agent's address", o.from.missing("intercept"))
	}
	agent, err := agentAddr(o.agent)
	if err != nil {
		return nil, fmt.Errorf("%s %q: %w", n("intercept"), o.agent, err)
	}
	tlsCfg, err := clientTLS(o.tlsCA, o.tlsName, agent)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", n("tls-ca"), err)
	}
	if o.tlsName != "" && tlsCfg == nil {
		return nil, fmt.Errorf("%s needs %s", n("tls-server-name"), n("tls-ca"))
	}
	var prefixes []netip.Prefix
	for i, s := range o.pools {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%s %q: want a prefix such as 198.19.0.0/16: %w", o.from.item("client-pool", i), s, err)
		}
		prefixes = append(prefixes, p)
	}
	pool, err := rewrite.NewPool(prefixes, o.poolSeed)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", n("client-pool"), err)
	}
	slot, slots, err := parseSlot(o.poolSlot)
	if err != nil {
		return nil, fmt.Errorf("%s %q: %w", n("pool-slot"), o.poolSlot, err)
	}
	if pool, err = pool.WithSlot(slot, slots); err != nil {
		return nil, fmt.Errorf("%s %q: %w", n("pool-slot"), o.poolSlot, err)
	}
	if len(prefixes) == 0 {
		pool = nil
		if slots > 1 {
			return nil, fmt.Errorf("%s %q needs %s", n("pool-slot"), o.poolSlot, n("client-pool"))
		}
	}
	maxMemory, err := parseSize(o.maxMemory)
	if err != nil {
		return nil, fmt.Errorf("%s %q: want a size of at least 16MiB, such as 512MiB or 2GiB", n("max-memory"), o.maxMemory)
	}
	recordSize, err := parseSize(o.recordSize)
	if err != nil {
		return nil, fmt.Errorf("%s %q: want a size such as 100MiB", n("record-size"), o.recordSize)
	}
	shared, err := o.daemon.read(o.from, false)
	if err != nil {
		return nil, err
	}

	cfg := daemon.DefaultCopyConfig()
	c, e := &cfg.Capture, &cfg.Engine
	c.Interface, c.SnapLen, c.Filter = o.iface, o.snaplen, o.filter
	o.daemon.setCapture(c)
	e.Maps, e.Pool, e.Workers, e.NoPacing = maps, pool, o.workers, o.noPacing
	e.MSS, e.QuietPeriod, e.HandshakeTimeout, e.ResponseTimeout = o.mss, o.quiet, o.handshake, o.response
	e.TrustInbound, e.DrainTimeout = o.trustInbound, o.drain
	e.IdleTimeout, e.Linger, e.MaxSessionBytes, e.MaxSessions = o.idle, o.linger, o.maxSessBytes, o.maxSessions
	e.Seed = o.poolSeed ^ 0x5eed
	e.ComparePrefix = o.comparePrefix
	e.Controls = controls
	cfg.Compare.Protocols = o.protocols
	switch {
	case o.noDivergenceLog:
		cfg.Compare.DivergenceLog = ""
	case o.divergenceLog != daemon.DefaultDivergenceLog:
		cfg.Compare.DivergenceLog, cfg.Compare.DivergenceLogOptional = o.divergenceLog, false
	}
	cfg.Client.Addr, cfg.Client.Name, cfg.Client.Secret, cfg.Client.TLS = agent, shared.name, shared.secret, tlsCfg
	cfg.MaxCPU, cfg.MaxMemory = o.maxCPU, maxMemory
	cfg.Record.Dir, cfg.Record.MaxBytes, cfg.Record.MaxAge, cfg.Record.MaxFiles = o.recordDir, recordSize, o.recordAge, o.recordFiles
	cfg.Mirror, cfg.Send = mirror, daemon.SendMode(o.send)
	cfg.Transport, cfg.TunnelPort = daemon.Transport(o.transport), o.tunnelPort
	cfg.MetricsAddr, cfg.Pprof, cfg.StatsInterval, cfg.Dump = o.daemon.metricsAddr, o.daemon.pprof, o.daemon.statsInterval, o.daemon.dump.config()
	if err := cfg.Validate(); err != nil {
		return nil, o.from.explain(err, o.fieldFlags())
	}
	return &copyConfig{CopyConfig: cfg, logFile: o.daemon.logFile}, nil
}
