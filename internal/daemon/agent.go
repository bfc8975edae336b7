package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/tcpshadow/tcpshadow/capture"
	"github.com/tcpshadow/tcpshadow/intercept"
	"github.com/tcpshadow/tcpshadow/intercept/tunnel"
	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/internal/logfile"
	"github.com/tcpshadow/tcpshadow/internal/metrics"
	"github.com/tcpshadow/tcpshadow/internal/pcapdump"
	"github.com/tcpshadow/tcpshadow/internal/sdnotify"
	"github.com/tcpshadow/tcpshadow/internal/tunnelsock"
)

// AgentConfig configures the intercept agent.
type AgentConfig struct {
	// Capture is where the shadow's replies arriving at the assist host are
	// read; an empty Filter means all TCP (CaptureConfig). Whatever the
	// filter, the agent's own control channel is never captured.
	Capture capture.Config
	// Local, when set, is the two-host mode (agent_local.go): the shadow's
	// packets to the pools are read from an NFQUEUE on this host, and
	// Capture is unused.
	Local *LocalConfig
	// Agent is the relay and its control channel. Agent.Secret (or
	// Agent.Secrets) is required unless Agent.InsecureNoAuth is set.
	Agent     intercept.AgentConfig
	Listen    string // [ADDR]:PORT copy daemons connect to
	MaxCPU    int    // CPUs used at once (GOMAXPROCS)
	MaxMemory int64  // bytes: the Go heap's soft limit (GOMEMLIMIT), and the flow table's budget (RelayConfig)

	MetricsAddr   string          // serve Prometheus metrics here; empty: off
	Pprof         bool            // also serve Go's profiler on MetricsAddr
	StatsInterval time.Duration   // log the counters this often; 0: never
	Dump          pcapdump.Config // every reply captured; empty Path: off
}

// agentSnapLen is what the agent captures of each reply: what it may
// relay, its IP and TCP headers with options (at most
// wire.MaxReplyHeader, IPv6 extension headers aside) and the largest
// payload prefix a copy daemon may ask for (wire.MaxReplyPrefix), behind
// a link header (Ethernet with VLAN tags, or Linux cooked). 512 covers
// 18+120+256 with room for IPv6 extension headers; more would only copy
// payload nobody is sent.
const agentSnapLen = 512

// The snap length covers every byte the agent may relay (fails to
// compile otherwise).
const _ = uint(agentSnapLen - 18 - wire.MaxReplyLen)

// DefaultAgentConfig returns the agent's defaults, each written once here
// or in the package whose config it is. It names no interface.
func DefaultAgentConfig() AgentConfig {
	c := AgentConfig{
		Capture:       capture.DefaultConfig(),
		Agent:         intercept.DefaultAgentConfig(),
		Listen:        ":" + strconv.Itoa(wire.DefaultPort),
		MaxCPU:        DefaultMaxCPU(),
		MaxMemory:     1 << 30,
		StatsInterval: 30 * time.Second,
		Dump:          pcapdump.DefaultConfig(),
	}
	// Replies are for addresses that are not ours: only what arrives.
	c.Capture.SnapLen, c.Capture.InboundOnly = agentSnapLen, true
	return c
}

// flowBytes is about what one registered flow costs the agent: its entry,
// and its keys in the flow table and its daemon's set.
const flowBytes = 256

// RelayConfig returns the relay's configuration: Agent, with the flow
// table held to a quarter of MaxMemory.
func (c *AgentConfig) RelayConfig() intercept.AgentConfig {
	a := c.Agent
	if a.MaxFlows == 0 {
		a.MaxFlows = intercept.DefaultAgentConfig().MaxFlows
	}
	a.MaxFlows = min(a.MaxFlows, int(c.MaxMemory/4/flowBytes))
	return a
}

// CaptureConfig returns the capture's configuration: Capture, its filter
// (all TCP when empty) narrowed so that the agent never captures its own
// control channel: packets to its listening port (on its listening
// address, when Listen names one). Which of the rest are relayed or
// parked follows the pools the copy daemons announce: the relay drops
// replies to any other address, counted (outside_pools), since a capture
// filter cannot follow peers as they come and go.
func (c *AgentConfig) CaptureConfig() capture.Config {
	cc := c.Capture
	base := "tcp"
	if cc.Filter != "" {
		base = "(" + cc.Filter + ")"
	}
	host, port, err := net.SplitHostPort(c.Listen)
	if err != nil {
		cc.Filter = base
		return cc
	}
	own := "dst port " + port
	if a, err := netip.ParseAddr(host); err == nil && !a.IsUnspecified() {
		own = "dst host " + a.Unmap().String() + " and " + own
	}
	cc.Filter = base + " and not (" + own + ")"
	return cc
}

// Validate checks the configuration; errors are *FieldError.
func (c *AgentConfig) Validate() error {
	if c.Local != nil {
		if err := validateLocal(c.Local); err != nil {
			return err
		}
	} else if err := validateCapture(&c.Capture); err != nil {
		return err
	}
	if c.Listen == "" {
		return fieldErr("Listen", nil, "is required")
	}
	if c.Agent.FlushDelay <= 0 || c.Agent.FlushDelay > time.Second {
		return fieldErr("Agent.FlushDelay", c.Agent.FlushDelay, "want (0, 1s]")
	}
	if c.Agent.MaxFlows < 1 {
		return fieldErr("Agent.MaxFlows", c.Agent.MaxFlows, "want at least 1")
	}
	if c.MaxMemory < minMemory {
		return fieldErr("MaxMemory", c.MaxMemory, "want a size of at least 16MiB, such as 512MiB or 2GiB")
	}
	if err := validateMetrics(c.MetricsAddr, c.Pprof); err != nil {
		return err
	}
	if err := validateRun(c.MaxCPU, c.StatsInterval, c.Dump); err != nil {
		return err
	}
	if len(c.Agent.Secret) > 0 && len(c.Agent.Secrets) > 0 {
		return fieldErr("Agent.Secrets", nil, "want a shared secret or one per copy daemon, not both")
	}
	if c.Local != nil && c.Local.Tunnel && len(c.Agent.Secret) == 0 && len(c.Agent.Secrets) == 0 {
		return fieldErr("Local.Tunnel", true, "needs a secret: the tunnel's keys derive from it")
	}
	if len(c.Agent.Secret) == 0 && len(c.Agent.Secrets) == 0 && !c.Agent.InsecureNoAuth {
		return fieldErr("Agent.Secret", nil,
			"is required: without it anyone who reaches the agent could register flows and read their replies (unless the agent is to run insecure on purpose)")
	}
	return nil
}

// RunAgent runs the intercept agent until ctx is done, then stops it and
// returns nil; or the error that kept it from starting or stopped it.
// Errors about a config field are *FieldError. logFile, if not nil, is
// the log's file, reopened with the dump on SIGHUP.
//
// Start order: the dump; SIGHUP; the CPU and memory budgets; the
// capture; the listener; the metrics endpoint. A step that fails closes
// what the ones before it opened. The agent is ready for systemd once it
// listens, and pets systemd's watchdog from its capture loop. It stops,
// closing its listener, its capture and every copy daemon's connection,
// when ctx is done or the capture fails; the dump closes last.
func RunAgent(ctx context.Context, cfg AgentConfig, log *slog.Logger, logFile *logfile.File) error {
	return runAgent(ctx, cfg, log, logFile, liveHost())
}

func runAgent(ctx context.Context, cfg AgentConfig, log *slog.Logger, logFile *logfile.File, h host) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	dump, err := openDump(cfg.Dump, log)
	if err != nil {
		return err
	}
	if dump != nil {
		defer dump.Close()
	}
	stopHangup := reopenOnHangup(log, logFile, dump)
	defer stopHangup()
	h.limit(cfg.MaxCPU, cfg.MaxMemory)
	ccfg := cfg.CaptureConfig()
	var src capture.Source
	if cfg.Local != nil {
		src, err = openLocal(*cfg.Local, log)
	} else {
		src, err = h.openCapture(ccfg)
	}
	if err != nil {
		return err
	}
	queue := src
	src = &watchdogSource{Source: src, wd: newWatchdog(log)}
	if dump != nil {
		// Dumped where the agent reads them, before the relay decides:
		// replies nobody registered (no_owner) are worth seeing too, and
		// the agent needs no hook.
		src = pcapdump.Tee(src, dump)
	}
	ln, err := h.listen(cfg.Listen)
	if err != nil {
		src.Close()
		return inField("Listen", err)
	}
	relay := cfg.RelayConfig()
	var tun *tunnelsock.Receiver
	if cfg.Local != nil && cfg.Local.Tunnel {
		relay.Tunnels = tunnel.NewTable()
		var stopTunnel func()
		if tun, stopTunnel, err = openTunnel(cfg.Listen, cfg.Local.TunnelPort, relay.Tunnels, log); err != nil {
			ln.Close()
			src.Close()
			return err
		}
		defer stopTunnel()
	}
	agent := intercept.NewAgent(relay, src, ln, log)
	samples := func() []metrics.Sample {
		out := append(append(AgentSamples(agent, src), LocalSamples(queue)...), DumpSamples(dump)...)
		return append(out, TunnelRecvSamples(tun)...)
	}
	if cfg.MetricsAddr != "" {
		if err := metrics.Serve(ctx, cfg.MetricsAddr, samples, cfg.Pprof, log); err != nil {
			ln.Close()
			src.Close()
			return inField("MetricsAddr", err)
		}
	}
	go metrics.LogEvery(ctx, cfg.StatsInterval, samples, metricPrefix, log)
	auth := "shared secret"
	switch {
	case len(cfg.Agent.Secrets) > 0:
		auth = fmt.Sprintf("one secret per copy daemon (%d)", len(cfg.Agent.Secrets))
	case len(cfg.Agent.Secret) == 0:
		auth = "NONE"
		log.Warn("INSECURE: the agent authenticates no copy daemon: anyone who reaches " + ln.Addr().String() +
			" can register flows within the pools it announces and read the sequence numbers of their replies, " +
			"and nothing stops frames injected on the path; give it --secret-file")
	}
	if cfg.Local != nil {
		log.Info("intercepting on this host", "pools", cfg.Local.Pools, "queue", cfg.Local.Queue.Num,
			"listen", ln.Addr().String(), "auth", auth, "tls", cfg.Agent.TLS != nil)
	} else {
		log.Info("intercepting", "iface", ccfg.Interface, "filter", ccfg.Filter, "listen", ln.Addr().String(),
			"auth", auth, "tls", cfg.Agent.TLS != nil)
	}
	if err := sdnotify.Ready(); err != nil {
		log.Warn("sd_notify", "err", err)
	}
	stopNotify := context.AfterFunc(ctx, func() { _ = sdnotify.Stopping() })
	defer stopNotify()
	err = agent.Run(ctx)
	log.Info("stopped", "summary", metrics.Summary(samples(), metricPrefix))
	return err
}
