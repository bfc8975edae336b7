package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"time"

	"github.com/spf13/cobra"

	"github.com/tcpshadow/tcpshadow/capture"
	"github.com/tcpshadow/tcpshadow/intercept"
	"github.com/tcpshadow/tcpshadow/internal/logfile"
	"github.com/tcpshadow/tcpshadow/internal/metrics"
	"github.com/tcpshadow/tcpshadow/internal/pcapdump"
	"github.com/tcpshadow/tcpshadow/internal/sdnotify"
)

type interceptOptions struct {
	iface      string
	filter     string
	listen     string
	allow      []string
	flushDelay time.Duration
	maxFlows   int
	maxCPU     int
	tlsCert    string
	tlsKey     string
	daemon     daemonOptions
	from       origin // which options the config file set
}

type interceptConfig struct {
	daemonConfig
	capture capture.Config
	agent   intercept.AgentConfig
	listen  string
	maxCPU  int // GOMAXPROCS
}

func newInterceptCmd(g *globalOptions) *cobra.Command {
	return newInterceptCmdWith(g, &interceptOptions{})
}

func newInterceptCmdWith(g *globalOptions, o *interceptOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "intercept --iface IFACE [--filter 'tcp and src port 80'] [flags]",
		Short: "Relay the shadow's replies to copy daemons (runs on the assist host)",
		Long: `intercept captures the shadow's replies, which the shadow routes to this host
where they die (keep ip_forward off here), and relays their IP and TCP headers
to the copy daemon that registered each flow, over an authenticated control
channel (TCP 36524 by default).

Every flag can also be set in the [intercept] table of a TOML file given
with --config (see tcpshadow config check); flags on the command line win.
SIGHUP reopens --log-file and --dump, for logrotate. The dump holds every
reply the agent captures, relayed or not, as captured: the first 256 bytes,
with the length on the wire in each record.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDaemon(cmd, g, "intercept", &o.daemon, &o.from, o.config, runIntercept)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.iface, "iface", "i", "", "interface the shadow's replies arrive on")
	f.StringVar(&o.filter, "filter", "tcp", "BPF filter for the shadow's replies, e.g. 'tcp and src port 80'")
	f.StringVarP(&o.listen, "listen", "l", ":36524", "address to serve copy daemons on")
	f.StringSliceVar(&o.allow, "allow", nil, "copy daemon addresses or prefixes allowed to connect (default: any)")
	f.StringVar(&o.tlsCert, "tls-cert", "", "serve the control channel over TLS with this PEM certificate (with --tls-key)")
	f.StringVar(&o.tlsKey, "tls-key", "", "the PEM private key of --tls-cert")
	f.DurationVar(&o.flushDelay, "flush-delay", 200*time.Microsecond, "longest a reply header waits to be batched")
	f.IntVar(&o.maxFlows, "max-flows", 1<<20, "flow table size bound")
	f.IntVar(&o.maxCPU, "max-cpu", defaultMaxCPU(), "CPUs the agent may use at once (GOMAXPROCS); default half the host's")
	o.daemon.addFlags(f, daemonHelp{
		dumped: "every reply captured (its first 256 bytes)",
		secret: "the shared secret copy daemons must prove",
		peer:   "copy daemons",
	})
	return cmd
}

// config validates the options; every error names its flag, or its key
// in the config file when the file set it.
func (o *interceptOptions) config() (*interceptConfig, error) {
	n := o.from.name
	if o.iface == "" {
		return nil, fmt.Errorf("%s is required", o.from.missing("iface"))
	}
	if o.filter == "" {
		return nil, fmt.Errorf("%s must not be empty", n("filter"))
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
	if o.flushDelay <= 0 || o.flushDelay > time.Second {
		return nil, fmt.Errorf("%s %v: want (0, 1s]", n("flush-delay"), o.flushDelay)
	}
	if o.maxFlows < 1 {
		return nil, fmt.Errorf("%s %d: want at least 1", n("max-flows"), o.maxFlows)
	}
	if err := checkMaxCPU(o.from, o.maxCPU); err != nil {
		return nil, err
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
	dc, err := o.daemon.config(o.from)
	if err != nil {
		return nil, err
	}
	return &interceptConfig{
		// Replies are for addresses that are not ours: only what arrives.
		capture: capture.Config{Interface: o.iface, Filter: o.filter, BufferSize: dc.captureBuffer, Timeout: dc.captureTimeout, SnapLen: 256, InboundOnly: true},
		agent: intercept.AgentConfig{
			Name: dc.name, Secret: dc.secret, TLS: tlsCfg, Allow: allow, FlushDelay: o.flushDelay, MaxFlows: o.maxFlows,
		},
		listen: o.listen, maxCPU: o.maxCPU, daemonConfig: dc,
	}, nil
}

// runIntercept runs the agent until ctx is done. lf is the log's file,
// reopened with the dump on SIGHUP.
func runIntercept(ctx context.Context, cfg *interceptConfig, log *slog.Logger, lf *logfile.File) error {
	dump, err := openDump(cfg.dump, log)
	if err != nil {
		return err
	}
	if dump != nil {
		defer dump.Close()
	}
	stopHangup := reopenOnHangup(log, lf, dump)
	defer stopHangup()
	runtime.GOMAXPROCS(cfg.maxCPU)
	src, err := capture.OpenLive(cfg.capture)
	if err != nil {
		return err
	}
	if dump != nil {
		// Dumped where the agent reads them, before the relay decides:
		// replies nobody registered (no_owner) are worth seeing too, and
		// the agent needs no hook.
		src = pcapdump.Tee(src, dump)
	}
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		src.Close()
		return fmt.Errorf("--listen: %w", err)
	}
	agent := intercept.NewAgent(cfg.agent, src, ln, log)
	samples := func() []metrics.Sample { return append(agentSamples(agent, src), dumpSamples(dump)...) }
	if cfg.metricsAddr != "" {
		if err := metrics.Serve(ctx, cfg.metricsAddr, samples, cfg.pprof, log); err != nil {
			ln.Close()
			src.Close()
			return fmt.Errorf("--metrics: %w", err)
		}
	}
	go metrics.LogEvery(ctx, cfg.statsInterval, samples, "tcpshadow_", log)
	log.Info("intercepting", "iface", cfg.capture.Interface, "filter", cfg.capture.Filter, "listen", ln.Addr().String(),
		"auth", len(cfg.agent.Secret) > 0)
	if err := sdnotify.Ready(); err != nil {
		log.Warn("sd_notify", "err", err)
	}
	stopNotify := context.AfterFunc(ctx, func() { _ = sdnotify.Stopping() })
	defer stopNotify()
	err = agent.Run(ctx)
	log.Info("stopped", "summary", metrics.Summary(samples(), "tcpshadow_"))
	return err
}

func agentSamples(a *intercept.Agent, src capture.Source) []metrics.Sample {
	st := a.Stats()
	cs := src.Stats()
	c := func(name, help string, v uint64) metrics.Sample {
		return metrics.Sample{Name: "tcpshadow_intercept_" + name + "_total", Help: help, Value: float64(v)}
	}
	g := func(name, help string, v int64) metrics.Sample {
		return metrics.Sample{Name: "tcpshadow_intercept_" + name, Help: help, Kind: metrics.Gauge, Value: float64(v)}
	}
	return []metrics.Sample{
		c("captured", "Reply packets captured.", st.Captured),
		c("bad", "Captured packets not decodable as TCP.", st.Bad),
		c("relayed", "Reply headers queued to a copy daemon.", st.Relayed),
		c("no_owner", "Replies of flows nobody registered.", st.NoOwner),
		c("parked", "SYN-ACK/RST replies parked until their registration.", st.Parked),
		c("parked_delivered", "Parked replies delivered.", st.ParkedDelivered),
		c("parked_expired", "Parked replies never claimed.", st.ParkedExpired),
		c("dropped_queue", "Replies dropped: relay queue full.", st.DroppedQueue),
		c("dropped_peer", "Replies dropped: a copy daemon's queue full.", st.DroppedPeer),
		c("flows_rejected", "Registrations refused: flow table full.", st.FlowsRejected),
		c("peers_refused", "Connections refused (allowlist, version, authentication).", st.PeersRefused),
		c("peer_errors", "Connections closed on a protocol error.", st.PeerErrors),
		c("batches", "Reply frames written.", st.Batches),
		g("flows", "Registered flows.", st.Flows),
		g("peers", "Connected copy daemons.", st.Peers),
		c("kernel_dropped", "Packets the kernel dropped for lack of capture buffer.", cs.KernelDropped),
		c("interface_dropped", "Packets dropped by the interface.", cs.IfDropped),
	}
}
