package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/tcpshadow/tcpshadow/capture"
	"github.com/tcpshadow/tcpshadow/intercept"
	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/internal/logfile"
	"github.com/tcpshadow/tcpshadow/internal/metrics"
	"github.com/tcpshadow/tcpshadow/internal/pcapdump"
	"github.com/tcpshadow/tcpshadow/internal/rawsock"
	"github.com/tcpshadow/tcpshadow/internal/sdnotify"
	"github.com/tcpshadow/tcpshadow/rewrite"
	"github.com/tcpshadow/tcpshadow/tcpstate"
)

// copyOptions are the copy command's flags as given.
type copyOptions struct {
	iface        string
	maps         []string
	agent        string
	tlsCA        string
	tlsName      string
	pools        []string
	filter       string
	workers      int
	noPacing     bool
	mss          int
	handshake    time.Duration
	response     time.Duration
	idle         time.Duration
	linger       time.Duration
	quiet        time.Duration
	maxSessBytes int
	maxSessions  int
	snaplen      int
	poolSeed     uint64
	maxCPU       int
	maxMemory    string
	daemon       daemonOptions
	from         origin // which options the config file set
}

// copyConfig is the validated configuration the daemon runs with.
type copyConfig struct {
	daemonConfig
	capture   capture.Config
	engine    tcpstate.Config
	client    intercept.ClientConfig
	maxCPU    int   // GOMAXPROCS
	maxMemory int64 // GOMEMLIMIT, bytes
}

func newCopyCmd(g *globalOptions) *cobra.Command { return newCopyCmdWith(g, &copyOptions{}) }

func newCopyCmdWith(g *globalOptions, o *copyOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "copy --iface IFACE --map [LOCAL:]PORT-TARGET:PORT --intercept AGENT [flags]",
		Short: "Copy the traffic prod receives to the shadow (runs on the prod host)",
		Long: `copy captures client packets arriving at prod, rewrites them toward the shadow
(destination, optionally a forged client address from a pool, ACKs translated
into the shadow's sequence space) and plays the client's side of TCP, learning
the shadow's replies from the intercept agent.

Maps (-x, repeatable or comma-separated):
  80-198.18.1.2:80                    port 80 on any local address
  198.18.0.1:80-198.18.1.2:8080       one local address only
  [2001:2::1]:80-[2001:2:0:1::2]:80   IPv6

Every flag can also be set in the [copy] table of a TOML file given with
--config (see tcpshadow config check); flags on the command line win.
SIGHUP reopens --log-file and --dump, for logrotate.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDaemon(cmd, g, "copy", &o.daemon, &o.from, o.config, runCopy)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.iface, "iface", "i", "", "interface to capture client packets on (\"any\" for all)")
	f.StringSliceVarP(&o.maps, "map", "x", nil, "what to copy where: [LOCALADDR:]PORT-TARGETADDR:PORT (repeatable)")
	f.StringVarP(&o.agent, "intercept", "s", "", "intercept agent address HOST[:PORT] (default port 36524)")
	f.StringVar(&o.tlsCA, "tls-ca", "", "talk to the agent over TLS, verifying its certificate against these PEM CA certificates")
	f.StringVar(&o.tlsName, "tls-server-name", "", "the name the agent's certificate must carry (default: the host of --intercept)")
	f.StringSliceVarP(&o.pools, "client-pool", "c", nil, "forge client addresses from this prefix (one per address family)")
	f.StringVar(&o.filter, "filter", "", "BPF filter replacing the one built from the maps")
	f.IntVar(&o.workers, "workers", 0, "datapath workers, flows sharded over them (default: --max-cpu)")
	f.IntVar(&o.maxCPU, "max-cpu", defaultMaxCPU(), "CPUs the daemon may use at once (GOMAXPROCS); default half the host's, to leave production alone")
	f.StringVar(&o.maxMemory, "max-memory", "1GiB", "memory budget: Go heap soft limit; half of it may hold buffered client data, and sessions are shed gradually past half of either budget")
	f.BoolVar(&o.noPacing, "no-pacing", false, "send requests as captured instead of after the shadow answered the previous one")
	f.IntVar(&o.mss, "mss", 1460, "largest segment sent to the shadow; larger captured packets are split")
	f.DurationVar(&o.handshake, "handshake-timeout", 5*time.Second, "give up a session whose SYN the shadow does not answer")
	f.DurationVar(&o.response, "response-timeout", 30*time.Second, "give up a session whose request the shadow does not answer")
	f.DurationVar(&o.idle, "idle-timeout", 120*time.Second, "end sessions idle this long")
	f.DurationVar(&o.linger, "linger", 2*time.Second, "keep ended sessions this long to reset late replies")
	f.DurationVar(&o.quiet, "quiet-period", 20*time.Millisecond, "shadow silence that completes an answer shorter than prod's")
	f.IntVar(&o.maxSessBytes, "max-session-bytes", 64<<20, "client data buffered per session before it is cut")
	f.IntVar(&o.maxSessions, "max-sessions", 1<<20, "sessions held at once; new ones beyond are shed")
	f.IntVar(&o.snaplen, "snaplen", 262144, "capture snap length")
	f.Uint64Var(&o.poolSeed, "pool-seed", 0, "seed of the client-address mapping into the pool")
	o.daemon.addFlags(f, daemonHelp{
		dumped: "every packet sent to the shadow",
		secret: "the control channel's shared secret",
		peer:   "the agent",
	})
	return cmd
}

// config validates the options; every error names its flag, or its key
// in the config file when the file set it.
func (o *copyOptions) config() (*copyConfig, error) {
	n := o.from.name
	if o.iface == "" {
		return nil, fmt.Errorf("%s is required", o.from.missing("iface"))
	}
	if len(o.maps) == 0 {
		return nil, fmt.Errorf("%s is required: what to copy where, e.g. 80-198.18.1.2:80", o.from.missing("map"))
	}
	var maps []tcpstate.Map
	for i, s := range o.maps {
		m, err := parseMap(s)
		if err != nil {
			return nil, fmt.Errorf("%s %q: %w", o.from.item("map", i), s, err)
		}
		maps = append(maps, m)
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
	if len(prefixes) == 0 {
		pool = nil
	}
	if err := checkMaxCPU(o.from, o.maxCPU); err != nil {
		return nil, err
	}
	maxMemory, err := parseSize(o.maxMemory)
	if err != nil || maxMemory < 16<<20 {
		return nil, fmt.Errorf("%s %q: want a size of at least 16MiB, such as 512MiB or 2GiB", n("max-memory"), o.maxMemory)
	}
	workers := o.workers
	if workers == 0 {
		workers = o.maxCPU
	}
	if workers < 1 || workers > 1024 {
		return nil, fmt.Errorf("%s %d: want 1..1024", n("workers"), o.workers)
	}
	if o.mss < 536 || o.mss > 65495 {
		return nil, fmt.Errorf("%s %d: want 536..65495", n("mss"), o.mss)
	}
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{
		{"handshake-timeout", o.handshake}, {"response-timeout", o.response},
		{"idle-timeout", o.idle}, {"linger", o.linger}, {"quiet-period", o.quiet},
	} {
		if d.v <= 0 {
			return nil, fmt.Errorf("%s %v: must be positive", n(d.flag), d.v)
		}
	}
	if o.maxSessBytes < 4096 {
		return nil, fmt.Errorf("%s %d: want at least 4096", n("max-session-bytes"), o.maxSessBytes)
	}
	if o.maxSessions < 1 {
		return nil, fmt.Errorf("%s %d: want at least 1", n("max-sessions"), o.maxSessions)
	}
	if o.snaplen < 128 || o.snaplen > 262144 {
		return nil, fmt.Errorf("%s %d: want 128..262144", n("snaplen"), o.snaplen)
	}
	dc, err := o.daemon.config(o.from)
	if err != nil {
		return nil, err
	}
	filter := o.filter
	if filter == "" {
		var dsts, targets []netip.AddrPort
		for _, m := range maps {
			local := m.Local
			if !local.Addr().IsValid() {
				// Any local address, but only of the target's family.
				any := netip.IPv6Unspecified()
				if m.Target.Addr().Is4() {
					any = netip.IPv4Unspecified()
				}
				local = netip.AddrPortFrom(any, local.Port())
			}
			dsts = append(dsts, local)
			targets = append(targets, m.Target)
		}
		filter = capture.FilterFor(dsts, targets)
	}
	cfg := &copyConfig{
		capture: capture.Config{
			Interface: o.iface, SnapLen: o.snaplen, BufferSize: dc.captureBuffer, Timeout: dc.captureTimeout,
			Filter: filter, InboundOnly: true,
		},
		engine: tcpstate.Config{
			Maps: maps, Pool: pool, Workers: workers, NoPacing: o.noPacing,
			MSS: o.mss, QuietPeriod: o.quiet,
			HandshakeTimeout: o.handshake, ResponseTimeout: o.response,
			IdleTimeout: o.idle, Linger: o.linger,
			MaxSessionBytes: o.maxSessBytes,
			// Half the budget for buffered data, a quarter for sessions at
			// about 1 KiB each; the rest is the Go runtime's headroom.
			MaxBufferBytes: maxMemory / 2,
			MaxSessions:    min(o.maxSessions, int(maxMemory/4/1024)),
			Seed:           o.poolSeed ^ 0x5eed,
		},
		daemonConfig: dc,
		client:       intercept.ClientConfig{Addr: agent, Name: dc.name, Secret: dc.secret, TLS: tlsCfg},
		maxCPU:       o.maxCPU,
		maxMemory:    maxMemory,
	}
	cfg.engine.Defaults()
	if err := cfg.engine.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", n("map"), err)
	}
	return cfg, nil
}

// parseSize parses a byte count: a plain number or one with a binary
// suffix (KiB, MiB, GiB, TiB; K, M, G, T mean the same).
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	mult := int64(1)
	for i, suf := range []string{"K", "M", "G", "T"} {
		for _, form := range []string{suf + "iB", suf + "B", suf} {
			if strings.HasSuffix(s, form) {
				s, mult = strings.TrimSpace(strings.TrimSuffix(s, form)), 1<<(10*(i+1))
				goto parsed
			}
		}
	}
parsed:
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mult, nil
}

// parseMap parses [LOCALADDR:]PORT-TARGETADDR[:PORT].
func parseMap(s string) (tcpstate.Map, error) {
	local, target, ok := strings.Cut(strings.TrimSpace(s), "-")
	if !ok {
		return tcpstate.Map{}, errors.New("want [LOCALADDR:]PORT-TARGETADDR:PORT")
	}
	var m tcpstate.Map
	if port, err := strconv.ParseUint(local, 10, 16); err == nil {
		m.Local = netip.AddrPortFrom(netip.Addr{}, uint16(port))
	} else if ap, err := netip.ParseAddrPort(local); err == nil {
		m.Local = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	} else {
		return m, fmt.Errorf("local side %q: want PORT or ADDR:PORT ([ADDR]:PORT for IPv6)", local)
	}
	if m.Local.Port() == 0 {
		return m, errors.New("local port must not be 0")
	}
	if ap, err := netip.ParseAddrPort(target); err == nil {
		m.Target = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	} else if a, err := netip.ParseAddr(strings.Trim(target, "[]")); err == nil {
		m.Target = netip.AddrPortFrom(a.Unmap(), m.Local.Port())
	} else {
		return m, fmt.Errorf("target %q: want ADDR:PORT ([ADDR]:PORT for IPv6)", target)
	}
	if m.Target.Port() == 0 {
		return m, errors.New("target port must not be 0")
	}
	if a := m.Local.Addr(); a.IsValid() && a.Is4() != m.Target.Addr().Is4() {
		return m, errors.New("local and target addresses are of different families")
	}
	return m, nil
}

// agentAddr adds the default port to HOST if it has none. A bad port is
// refused here: the client would otherwise retry it forever.
func agentAddr(s string) (string, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		// HOST, [HOST] or a bare IPv6 address.
		host, port = strings.Trim(s, "[]"), strconv.Itoa(wire.DefaultPort)
	}
	if host == "" {
		return "", errors.New("empty host")
	}
	if err := checkPort(port); err != nil {
		return "", err
	}
	return net.JoinHostPort(host, port), nil
}

// checkPort accepts a decimal port 1..65535.
func checkPort(port string) error {
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("port %q: want 1..65535", port)
	}
	return nil
}

// clientTLS builds the TLS configuration verifying the agent against the
// CA certificates in caFile; nil when caFile is empty (plain TCP).
func clientTLS(caFile, serverName, agent string) (*tls.Config, error) {
	if caFile == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate in it", caFile)
	}
	if serverName == "" {
		serverName, _, _ = net.SplitHostPort(agent)
	}
	return &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS13}, nil
}

// readSecret reads a shared secret file; empty path means no secret.
func readSecret(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	secret := []byte(strings.TrimSpace(string(b)))
	if len(secret) < 16 {
		return nil, fmt.Errorf("%s: secret shorter than 16 bytes", path)
	}
	return secret, nil
}

// runCopy runs the copy daemon until ctx is done. lf is the log's file,
// reopened with the dump on SIGHUP.
func runCopy(ctx context.Context, cfg *copyConfig, log *slog.Logger, lf *logfile.File) error {
	dump, err := openDump(cfg.dump, log)
	if err != nil {
		return err
	}
	if dump != nil {
		// Deferred first, so closed last: after the engine's final RSTs.
		defer dump.Close()
	}
	stopHangup := reopenOnHangup(log, lf, dump)
	defer stopHangup()
	// Leave production its CPUs and memory: the Go scheduler and collector
	// are held to the budget, the engine sheds load past it.
	runtime.GOMAXPROCS(cfg.maxCPU)
	debug.SetMemoryLimit(cfg.maxMemory)
	senders := make([]tcpstate.Sender, cfg.engine.Workers)
	for i := range senders {
		s, err := rawsock.Open()
		if err != nil {
			return err
		}
		defer s.Close()
		senders[i] = rawsock.NewBatch(s) // one sendmmsg per worker batch
		if dump != nil {
			senders[i] = pcapdump.TeeSender(senders[i], dump)
		}
	}
	var eng *tcpstate.Engine
	client := intercept.NewClient(cfg.client, func(hdr []byte) { eng.HandleReply(hdr) }, log)
	eng, err = tcpstate.NewEngine(cfg.engine, senders, client)
	if err != nil {
		return fmt.Errorf("--map: %w", err)
	}
	src, err := capture.OpenLive(cfg.capture)
	if err != nil {
		return err
	}
	samples := func() []metrics.Sample { return append(copySamples(eng, client, src), dumpSamples(dump)...) }
	if cfg.metricsAddr != "" {
		if err := metrics.Serve(ctx, cfg.metricsAddr, samples, cfg.pprof, log); err != nil {
			src.Close()
			return fmt.Errorf("--metrics: %w", err)
		}
	}
	log.Info("copying", "iface", cfg.capture.Interface, "filter", cfg.capture.Filter,
		"maps", fmt.Sprint(cfg.engine.Maps), "agent", cfg.client.Addr, "workers", cfg.engine.Workers)

	clientCtx, stopClient := context.WithCancel(context.Background())
	defer stopClient()
	engCtx, stopEngine := context.WithCancel(context.Background())
	defer stopEngine()
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); _ = client.Run(clientCtx) }()
	engDone := make(chan struct{})
	go func() { defer wg.Done(); defer close(engDone); eng.Run(engCtx) }()
	go func() { defer wg.Done(); metrics.LogEvery(ctx, cfg.statsInterval, samples, "tcpshadow_", log) }()

	// Ready for systemd (Type=notify; a no-op without $NOTIFY_SOCKET) once
	// the capture is open and the control channel is up — or after a few
	// seconds without it: the daemon runs while the agent is away and
	// connects by itself, so an agent down elsewhere must not make this
	// unit fail to start. The status line says which.
	// Capture runs meanwhile; readyCtx ends the wait if capture stops.
	readyCtx, readyCancel := context.WithCancel(ctx)
	defer readyCancel()
	go func() {
		status := "copying; control channel up"
		if !waitConnected(readyCtx, client, readyWait) {
			if readyCtx.Err() != nil {
				return
			}
			status = "copying; intercept agent unreachable, retrying"
		}
		// One datagram, so systemd never shows READY without its reason.
		if err := sdnotify.Notify("READY=1\nSTATUS=" + status); err != nil {
			log.Warn("sd_notify", "err", err)
		}
	}()
	err = captureLoop(ctx, src, eng)
	readyCancel()
	_ = sdnotify.Stopping()
	src.Close()
	// Shutdown order: the engine resets the shadow's sessions and
	// deregisters their flows, then the client flushes and closes.
	stopEngine()
	<-engDone
	time.Sleep(50 * time.Millisecond)
	stopClient()
	wg.Wait()
	log.Info("stopped", "summary", metrics.Summary(samples(), "tcpshadow_"))
	return err
}

// readyWait bounds how long readiness waits for the control channel.
const readyWait = 5 * time.Second

// waitConnected waits, bounded by d and ctx, for the client to connect.
func waitConnected(ctx context.Context, c *intercept.Client, d time.Duration) bool {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	deadline := time.Now().Add(d)
	for !c.Connected() {
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
	return true
}

// captureLoop feeds captured packets to the engine until ctx is done.
func captureLoop(ctx context.Context, src capture.Source, eng *tcpstate.Engine) error {
	go func() {
		<-ctx.Done()
		src.Close()
	}()
	for {
		pkt, ts, err := src.Read()
		switch {
		case err == nil:
			eng.HandleCaptured(pkt, ts)
		case errors.Is(err, capture.ErrTimeout):
		case errors.Is(err, io.EOF):
			return nil
		default:
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
}

// copySamples renders the copy daemon's counters as metric samples.
func copySamples(eng *tcpstate.Engine, client *intercept.Client, src capture.Source) []metrics.Sample {
	st := eng.Stats()
	out := make([]metrics.Sample, 0, 64)
	st.EachCounter(func(name string, v uint64) {
		out = append(out, metrics.Sample{
			Name: "tcpshadow_copy_events_total", Help: "Copy datapath events by stage.",
			Labels: []string{"event", name}, Value: float64(v),
		})
	})
	st.EachEnded(func(reason string, v uint64) {
		out = append(out, metrics.Sample{
			Name: "tcpshadow_copy_sessions_ended_total", Help: "Sessions ended, by reason.",
			Labels: []string{"reason", reason}, Value: float64(v),
		})
	})
	cs := client.Stats()
	connected := 0.0
	if cs.Connected {
		connected = 1
	}
	capst := src.Stats()
	out = append(out,
		metrics.Sample{Name: "tcpshadow_copy_sessions_active", Help: "Sessions held, lingering ones included.", Kind: metrics.Gauge, Value: float64(st.Active)},
		metrics.Sample{Name: "tcpshadow_copy_buffered_bytes", Help: "Client data buffered for the shadow.", Kind: metrics.Gauge, Value: float64(st.Buffered)},
		metrics.Sample{Name: "tcpshadow_capture_kernel_received_total", Help: "Packets the kernel passed the filter (pcap_stats).", Value: float64(capst.KernelRecv)},
		metrics.Sample{Name: "tcpshadow_capture_kernel_dropped_total", Help: "Packets dropped by the kernel for lack of buffer.", Value: float64(capst.KernelDropped)},
		metrics.Sample{Name: "tcpshadow_capture_interface_dropped_total", Help: "Packets dropped by the interface.", Value: float64(capst.IfDropped)},
		metrics.Sample{Name: "tcpshadow_capture_non_ip_total", Help: "Captured frames that were not IP.", Value: float64(capst.NonIP)},
		metrics.Sample{Name: "tcpshadow_agent_connected", Help: "1 when the control channel to the agent is up.", Kind: metrics.Gauge, Value: connected},
		metrics.Sample{Name: "tcpshadow_agent_connects_total", Help: "Control channel connections made.", Value: float64(cs.Connects)},
		metrics.Sample{Name: "tcpshadow_agent_connect_failures_total", Help: "Failed attempts to reach the agent.", Value: float64(cs.ConnectFailures)},
		metrics.Sample{Name: "tcpshadow_agent_registrations_total", Help: "Flow registrations sent.", Value: float64(cs.Registered)},
		metrics.Sample{Name: "tcpshadow_agent_deregistrations_total", Help: "Flow de-registrations sent.", Value: float64(cs.Deregistered)},
		metrics.Sample{Name: "tcpshadow_agent_queue_full_total", Help: "Registrations dropped: queue full.", Value: float64(cs.QueueFull)},
		metrics.Sample{Name: "tcpshadow_agent_flows", Help: "Flows registered with the agent.", Kind: metrics.Gauge, Value: float64(cs.Flows)},
		metrics.Sample{Name: "tcpshadow_agent_replies_total", Help: "Reply headers received from the agent.", Value: float64(cs.Replies)},
	)
	return out
}
