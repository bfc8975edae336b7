package daemon

import (
	"context"
	"log/slog"
	"strconv"
	"time"

	"github.com/tcpshadow/tcpshadow/capture"
	"github.com/tcpshadow/tcpshadow/intercept"
	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/internal/logfile"
	"github.com/tcpshadow/tcpshadow/internal/metrics"
	"github.com/tcpshadow/tcpshadow/internal/pcapdump"
	"github.com/tcpshadow/tcpshadow/internal/sdnotify"
)

// AgentConfig configures the intercept agent.
type AgentConfig struct {
	Capture capture.Config        // the shadow's replies arriving at the assist host
	Agent   intercept.AgentConfig // the relay and its control channel
	Listen  string                // [ADDR]:PORT copy daemons connect to
	MaxCPU  int                   // CPUs used at once (GOMAXPROCS)

	MetricsAddr   string          // serve Prometheus metrics here; empty: off
	Pprof         bool            // also serve Go's profiler on MetricsAddr
	StatsInterval time.Duration   // log the counters this often; 0: never
	Dump          pcapdump.Config // every reply captured; empty Path: off
}

// agentSnapLen is what the agent captures of each reply: its IP and TCP
// headers with options, which is all it relays.
const agentSnapLen = 256

// DefaultAgentConfig returns the agent's defaults, each written once here
// or in the package whose config it is. It names no interface.
func DefaultAgentConfig() AgentConfig {
	c := AgentConfig{
		Capture:       capture.DefaultConfig(),
		Agent:         intercept.DefaultAgentConfig(),
		Listen:        ":" + strconv.Itoa(wire.DefaultPort),
		MaxCPU:        DefaultMaxCPU(),
		StatsInterval: 30 * time.Second,
		Dump:          pcapdump.DefaultConfig(),
	}
	// Replies are for addresses that are not ours: only what arrives.
	c.Capture.Filter, c.Capture.SnapLen, c.Capture.InboundOnly = "tcp", agentSnapLen, true
	return c
}

// Validate checks the configuration; errors are *FieldError.
func (c *AgentConfig) Validate() error {
	if err := validateCapture(&c.Capture); err != nil {
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
	return validateRun(c.MaxCPU, c.StatsInterval, c.Dump)
}

// RunAgent runs the intercept agent until ctx is done, then stops it and
// returns nil; or the error that kept it from starting or stopped it.
// Errors about a config field are *FieldError. logFile, if not nil, is
// the log's file, reopened with the dump on SIGHUP.
//
// Start order: the dump; SIGHUP; the CPU budget; the capture; the
// listener; the metrics endpoint. A step that fails closes what the ones
// before it opened. The agent is ready for systemd once it listens. It
// stops, closing its listener, its capture and every copy daemon's
// connection, when ctx is done or the capture fails; the dump closes
// last.
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
	h.limit(cfg.MaxCPU, 0)
	src, err := h.openCapture(cfg.Capture)
	if err != nil {
		return err
	}
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
	agent := intercept.NewAgent(cfg.Agent, src, ln, log)
	samples := func() []metrics.Sample { return append(AgentSamples(agent, src), DumpSamples(dump)...) }
	if cfg.MetricsAddr != "" {
		if err := metrics.Serve(ctx, cfg.MetricsAddr, samples, cfg.Pprof, log); err != nil {
			ln.Close()
			src.Close()
			return inField("MetricsAddr", err)
		}
	}
	go metrics.LogEvery(ctx, cfg.StatsInterval, samples, metricPrefix, log)
	log.Info("intercepting", "iface", cfg.Capture.Interface, "filter", cfg.Capture.Filter, "listen", ln.Addr().String(),
		"auth", len(cfg.Agent.Secret) > 0)
	if err := sdnotify.Ready(); err != nil {
		log.Warn("sd_notify", "err", err)
	}
	stopNotify := context.AfterFunc(ctx, func() { _ = sdnotify.Stopping() })
	defer stopNotify()
	err = agent.Run(ctx)
	log.Info("stopped", "summary", metrics.Summary(samples(), metricPrefix))
	return err
}
