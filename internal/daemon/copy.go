package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tcpshadow/tcpshadow/capture"
	"github.com/tcpshadow/tcpshadow/intercept"
	"github.com/tcpshadow/tcpshadow/intercept/tunnel"
	"github.com/tcpshadow/tcpshadow/internal/logfile"
	"github.com/tcpshadow/tcpshadow/internal/metrics"
	"github.com/tcpshadow/tcpshadow/internal/pcapdump"
	"github.com/tcpshadow/tcpshadow/internal/record"
	"github.com/tcpshadow/tcpshadow/internal/sdnotify"
	"github.com/tcpshadow/tcpshadow/tcpstate"
)

// CopyConfig configures the copy daemon.
type CopyConfig struct {
	// Capture is where client packets arriving at prod are read; an empty
	// Filter means one built from the maps (CaptureConfig).
	Capture capture.Config
	// Engine is the datapath's configuration, budgets aside: Workers 0
	// means one per MaxCPU, MaxBufferBytes is derived from MaxMemory and
	// MaxSessions only caps what MaxMemory allows (EngineConfig).
	Engine tcpstate.Config
	Client intercept.ClientConfig // the control channel to the agent
	// Compare configures the comparison of prod's answers with the
	// shadow's (Engine.ComparePrefix > 0).
	Compare CompareConfig
	// Mirror, when its Proto is set, replaces both captures: the daemon
	// runs on a mirror target and reads both directions of prod's traffic
	// from the session (Capture.BufferSize sizes its socket buffer unless
	// Mirror.BufferSize does).
	Mirror capture.MirrorConfig
	Send   SendMode // how packets leave for the shadow
	// Transport, when TransportUDP, seals them into datagrams to the
	// agent's TunnelPort on the shadow host instead (tunnel.go).
	Transport  Transport
	TunnelPort int
	tunnel     *tunnel.Current // the tunnel's keys, from the client to the senders

	MaxCPU    int   // CPUs used at once (GOMAXPROCS)
	MaxMemory int64 // bytes: the Go heap's soft limit (GOMEMLIMIT) and the engine's budgets

	MetricsAddr   string          // serve Prometheus metrics here; empty: off
	Pprof         bool            // also serve Go's profiler on MetricsAddr
	StatsInterval time.Duration   // log the counters this often; 0: never
	Dump          pcapdump.Config // every packet sent to the shadow; empty Path: off
	Record        record.Config   // what the captures read, for a replay; empty Dir: off

	// Reload, if set, returns the load-test controls again (the command
	// re-reads its config file): called on SIGHUP, its controls then
	// replace the engine's; an error keeps them, logged.
	Reload func() (tcpstate.Controls, error)
}

// minMemory is the smallest MaxMemory: its quarter holds 4096 sessions.
const minMemory = 16 << 20

// DefaultCopyConfig returns the copy daemon's defaults, each written once
// here or in the package whose config it is. It names no interface, map
// or agent.
func DefaultCopyConfig() CopyConfig {
	c := CopyConfig{
		Capture:       capture.DefaultConfig(),
		Engine:        tcpstate.DefaultConfig(),
		Client:        intercept.DefaultClientConfig(),
		MaxCPU:        DefaultMaxCPU(),
		MaxMemory:     1 << 30,
		StatsInterval: 30 * time.Second,
		Dump:          pcapdump.DefaultConfig(),
		Record:        record.DefaultConfig(),
		Compare:       CompareConfig{DivergenceLog: DefaultDivergenceLog, DivergenceLogOptional: true},
		Mirror:        capture.MirrorConfig{VNI: capture.AnyVNI},
		Send:          SendRaw,
		Transport:     TransportDirect,
		TunnelPort:    tunnel.DefaultPort,
	}
	// The copier must never see what it sends itself, whatever the filter.
	c.Capture.InboundOnly = true
	c.Engine.Workers = 0        // one per MaxCPU
	c.Engine.MaxBufferBytes = 0 // derived from MaxMemory
	return c
}

// EngineConfig returns the engine's configuration with its budgets
// derived: one worker per CPU unless Engine.Workers says otherwise; half
// of MaxMemory for buffered client data, a quarter for sessions at about
// 1 KiB each (fewer if Engine.MaxSessions says so); the rest is the Go
// runtime's headroom.
func (c *CopyConfig) EngineConfig() tcpstate.Config {
	e := c.Engine
	if e.Workers == 0 {
		e.Workers = c.MaxCPU
	}
	e.MaxBufferBytes = c.MaxMemory / 2
	e.MaxSessions = min(e.MaxSessions, int(c.MaxMemory/4/1024))
	if c.Transport == TransportUDP {
		e.MSS = min(e.MSS, TunnelMSS)
	}
	e.QueueWait = queueWaitFor(c.ringMax(), e.QueueWait)
	return e
}

// lineRate is the rate the copier's capture is sized for: 1 Gbit/s, in
// bytes a second.
const lineRate = 125e6

// ringFill is how long a ring of ringBytes takes to fill at lineRate.
func ringFill(ringBytes int) time.Duration {
	return time.Duration(float64(ringBytes) / lineRate * float64(time.Second))
}

// queueWaitFor is how long the capture waits on a full worker queue
// with a kernel ring of ringBytes: half the time the ring takes to fill
// at 1 Gbit/s (134 ms for the default 32 MiB), so the ring holds what
// arrives meanwhile; never below floor nor above tcpstate.MaxQueueWait.
func queueWaitFor(ringBytes int, floor time.Duration) time.Duration {
	return min(max(ringFill(ringBytes)/2, floor), tcpstate.MaxQueueWait)
}

// ringMax is the most the capture ring grows to: Capture.BufferSize, and
// no more than an eighth of MaxMemory.
func (c *CopyConfig) ringMax() int {
	if c.MaxMemory <= 0 {
		return c.Capture.BufferSize
	}
	return int(min(int64(c.Capture.BufferSize), max(c.MaxMemory/8, 1<<20)))
}

// CaptureConfig returns the capture's configuration: Capture, with a
// filter built from the maps unless Capture.Filter is set, and a ring of
// at most ringMax that grows to hold, at the rate it is read at, twice
// the capture's longest wait on a full worker queue (at 1 Gbit/s, the
// whole ring).
func (c *CopyConfig) CaptureConfig() capture.Config {
	cc := c.Capture
	cc.BufferSize = c.ringMax()
	cc.Hold = 2 * queueWaitFor(cc.BufferSize, c.Engine.QueueWait)
	if cc.Filter == "" {
		cc.Filter = capture.FilterFor(c.endpoints())
	}
	return cc
}

// prodSnapLen is what the copier captures of prod's packets: a link
// header, IP and TCP headers with options, and the payload prefix the
// engine keeps (tcpstate.ProdPrefix).
const prodSnapLen = 256

// ProdCaptureConfig returns the capture of prod's side of the copied
// conversations (scenario 33): the packets prod sends from the maps'
// local endpoints, on Capture's interface, cut after their headers and a
// short prefix, in a ring a quarter of Capture's (at least 1 MiB) when
// it has one of its own (on a live host they share the client capture's,
// capture.Outbound). ok is false with Engine.TrustInbound, when nothing of
// prod's is read, and with a Mirror, whose session carries prod's side.
func (c *CopyConfig) ProdCaptureConfig() (cc capture.Config, ok bool) {
	if c.Engine.TrustInbound || c.mirrored() {
		return capture.Config{}, false
	}
	cc = c.Capture
	cc.InboundOnly, cc.OutboundOnly = false, true
	cc.SnapLen = max(prodSnapLen, prodSnapLen-tcpstate.ProdPrefix+c.Engine.ComparePrefix)
	if len(c.h2Ports()) > 0 {
		cc.SnapLen = capture.MaxSnapLen // prod's HTTP/2 frames are walked whole (one capture for every map)
	}
	cc.BufferSize = max(c.Capture.BufferSize/4, 1<<20)
	locals, targets := c.endpoints()
	cc.Filter = capture.FilterFrom(locals, targets)
	return cc, true
}

// endpoints returns the maps' local endpoints, an unspecified address
// standing for any address of the target's family, and their targets.
func (c *CopyConfig) endpoints() (locals, targets []netip.AddrPort) {
	for _, m := range c.Engine.Maps {
		local := m.Local
		if !local.Addr().IsValid() {
			// Any local address, but only of the target's family.
			any := netip.IPv6Unspecified()
			if m.Target.Addr().Is4() {
				any = netip.IPv4Unspecified()
			}
			local = netip.AddrPortFrom(any, local.Port())
		}
		locals = append(locals, local)
		targets = append(targets, m.Target)
	}
	return locals, targets
}

// Validate checks the configuration; errors are *FieldError.
func (c *CopyConfig) Validate() error {
	if err := c.validateSource(); err != nil {
		return err
	}
	if err := c.validateSend(); err != nil {
		return err
	}
	if c.Client.Addr == "" {
		return fieldErr("Client.Addr", nil, "is required")
	}
	if err := validateRun(c.MaxCPU, c.StatsInterval, c.Dump); err != nil {
		return err
	}
	if err := validateMetrics(c.MetricsAddr, c.Pprof); err != nil {
		return err
	}
	if err := c.validateRecord(); err != nil {
		return err
	}
	if c.MaxMemory < minMemory {
		return fieldErr("MaxMemory", c.MaxMemory, "want a size of at least 16MiB, such as 512MiB or 2GiB")
	}
	e := c.EngineConfig()
	if err := inField("Engine", e.Validate()); err != nil {
		return err
	}
	if err := c.Compare.validate(e.Maps); err != nil {
		return fieldErr("Compare.Protocols", c.Compare.Protocols, err.Error())
	}
	return nil
}

// RunCopy runs the copy daemon until ctx is done, then stops it and
// returns nil; or the error that kept it from starting or stopped it.
// Errors about a config field are *FieldError. logFile, if not nil, is
// the log's file, reopened with the dump on SIGHUP.
//
// Start order: the dump, so that it holds the first packet sent; SIGHUP;
// the process budgets; one raw socket per worker; the control channel's
// client and the engine; the capture; the metrics endpoint. A step that
// fails closes what the ones before it opened. The daemon is ready for
// systemd once the capture is open and the control channel up, or
// readyWait later without it.
//
// Stop order, once ctx is done or the capture fails: systemd is told it
// is stopping; the capture is closed, so nothing enters the engine; the
// engine ends every session, resetting it on the shadow, and deregisters
// its flows; once the client has taken those deregistrations (it holds no
// flow), it is stopped, writing what it holds and closing the control
// channel; then the raw sockets close, and the dump last, after the
// engine's final resets.
func RunCopy(ctx context.Context, cfg CopyConfig, log *slog.Logger, logFile *logfile.File) error {
	return runCopy(ctx, cfg, log, logFile, liveHost())
}

func runCopy(ctx context.Context, cfg CopyConfig, log *slog.Logger, logFile *logfile.File, h host) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	ecfg, ccfg := cfg.EngineConfig(), cfg.CaptureConfig()
	dump, err := openDump(cfg.Dump, log)
	if err != nil {
		return err
	}
	if dump != nil {
		// Deferred first, so closed last: after the engine's final RSTs.
		defer dump.Close()
	}
	var running atomic.Pointer[tcpstate.Engine] // for SIGHUP, once it runs
	stopHangup := reopenOnHangup(log, logFile, dump, func() { reloadControls(cfg.Reload, running.Load(), log) })
	defer stopHangup()
	h.limit(cfg.MaxCPU, cfg.MaxMemory)
	openSender, sendSamples, stopSend, err := cfg.senders(h, log)
	if err != nil {
		return err
	}
	defer stopSend() // deferred before the senders' Close: runs after them
	senders := make([]tcpstate.Sender, ecfg.Workers)
	for i := range senders {
		s, closer, err := openSender()
		if err != nil {
			return err
		}
		defer closer.Close()
		senders[i] = s
		if dump != nil {
			senders[i] = pcapdump.TeeSender(s, dump)
		}
	}
	if h.isLocal != nil && hasPortOnlyMap(ecfg.Maps) {
		local, err := h.isLocal(ctx, log)
		if err != nil {
			return err
		}
		ecfg.IsLocal = local
	}
	// The comparison stops after the engine, so that the rounds its last
	// sessions end with are counted.
	cmpCtx, stopCompare := context.WithCancel(context.Background())
	defer stopCompare()
	cmp, cmpDone, err := startCompare(cmpCtx, cfg.Compare, &ecfg, log)
	if err != nil {
		return inField("Compare", err)
	}
	var eng *tcpstate.Engine
	client := intercept.NewClient(cfg.ClientConfig(), func(hdr []byte) { eng.HandleReply(hdr) }, log)
	eng, err = tcpstate.NewEngine(ecfg, senders, client, log)
	if err != nil {
		return inField("Engine", err)
	}
	running.Store(eng)
	rec, err := openRecord(cfg.Record, log)
	if err != nil {
		return err
	}
	if rec != nil {
		defer rec.Close() // after the captures close: what they read is written
	}
	pcfg, prodSide := cfg.ProdCaptureConfig()
	if prodSide && h.oneRing {
		// Prod's side in the same ring: in the order the kernel saw
		// both sides, one wake-up for both.
		ccfg.Outbound = capture.Outbound{Filter: pcfg.Filter, SnapLen: min(pcfg.SnapLen, ccfg.SnapLen)}
	}
	src, err := cfg.openSource(h, ccfg)
	if err != nil {
		return err
	}
	var prodSrc capture.Source // nil with TrustInbound, or in src's ring
	if prodSide && !h.oneRing {
		if prodSrc, err = h.openCapture(pcfg); err != nil {
			src.Close()
			return fmt.Errorf("capture prod's side: %w", err)
		}
	}
	closeCaptures := func() {
		src.Close()
		if prodSrc != nil {
			prodSrc.Close()
		}
	}
	samples := func() []metrics.Sample {
		out := append(CopySamples(eng, client, src, prodSrc), DumpSamples(dump)...)
		out = append(out, ControlSamples(eng)...)
		out = append(out, RecordSamples(rec)...)
		out = append(append(out, MirrorSamples(src)...), sendSamples()...)
		if cmp != nil {
			out = append(out, cmp.Samples()...)
		}
		return out
	}
	var reportHandlers map[string]http.Handler
	if cmp != nil {
		reportHandlers = cmp.Handlers()
	}
	if cfg.MetricsAddr != "" {
		if err := metrics.ServeWith(ctx, cfg.MetricsAddr, samples, cfg.Pprof, reportHandlers, log); err != nil {
			closeCaptures()
			return inField("MetricsAddr", err)
		}
	}
	log.Info("copying", "iface", ccfg.Interface, "filter", ccfg.Filter, "prod_filter", pcfg.Filter,
		"maps", fmt.Sprint(ecfg.Maps), "agent", cfg.Client.Addr, "workers", ecfg.Workers)
	cfg.logDeployment(log, ccfg)
	if !prodSide && !cfg.mirrored() {
		log.Warn("trusting inbound packets: prod's side is not captured, so spoofed or firewalled packets reach the shadow too")
	}

	clientCtx, stopClient := context.WithCancel(context.Background())
	defer stopClient()
	engCtx, stopEngine := context.WithCancel(context.Background())
	defer stopEngine()
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); _ = client.Run(clientCtx) }()
	engDone := make(chan struct{})
	go func() { defer wg.Done(); defer close(engDone); eng.Run(engCtx) }()
	go func() { defer wg.Done(); metrics.LogEvery(ctx, cfg.StatsInterval, samples, metricPrefix, log) }()

	readyCtx, readyCancel := context.WithCancel(ctx)
	defer readyCancel()
	go notifyCopyReady(readyCtx, client, log)
	// Prod's side on a goroutine of its own, with an engine Input of its
	// own; the first capture to fail stops both.
	capCtx, stopCapture := context.WithCancel(ctx)
	defer stopCapture()
	prodErr := make(chan error, 1)
	if prodSrc != nil {
		go func() {
			err := captureLoop(capCtx, recorded(prodSrc, rec), eng.NewInput(), &watchdog{}) // the loop below pets it
			stopCapture()
			prodErr <- err
		}()
	} else {
		prodErr <- nil
	}
	err = captureLoop(capCtx, recorded(src, rec), eng.NewInput(), newWatchdog(log))
	stopCapture()
	if perr := <-prodErr; err == nil && perr != nil {
		err = fmt.Errorf("capture prod's side: %w", perr)
	}
	readyCancel()
	_ = sdnotify.Stopping()
	closeCaptures()
	stopEngine()
	<-engDone
	if cmp != nil {
		stopCompare()
		<-cmpDone
	}
	flushCtx, cancelFlush := context.WithTimeout(context.Background(), deregisterBound)
	_ = client.Flush(flushCtx) // the engine's deregistrations reach the agent
	cancelFlush()
	stopClient()
	wg.Wait()
	log.Info("stopped", "summary", metrics.Summary(samples(), metricPrefix))
	return err
}

// reloadControls applies the controls reload returns to eng (SIGHUP);
// nothing without a reload or before the engine exists.
func reloadControls(reload func() (tcpstate.Controls, error), eng *tcpstate.Engine, log *slog.Logger) {
	if reload == nil || eng == nil {
		return
	}
	c, err := reload()
	if err == nil {
		err = eng.SetControls(c)
	}
	if err != nil {
		log.Error("re-read the controls on SIGHUP; keeping those in effect", "err", err)
		return
	}
	now, share := eng.ControlsNow()
	log.Info("controls changed on SIGHUP", "sample", now.Sample, "share_now", share, "multiply", now.Multiply,
		"ramp", now.Ramp, "max_new_sessions", now.MaxNewSessions)
}

// deregisterBound bounds how long a stopping copy daemon waits for its
// client to write the engine's deregistrations: the agent drops a copy
// daemon's flows when its connection closes anyway.
const deregisterBound = time.Second

// readyWait bounds how long readiness waits for the control channel.
const readyWait = 5 * time.Second

// notifyCopyReady tells systemd (Type=notify; a no-op without
// $NOTIFY_SOCKET) the copy daemon is ready once the control channel is up
// — or after readyWait without it: the daemon runs while the agent is
// away and connects by itself, so an agent down elsewhere must not make
// this unit fail to start. The status line says which. Capture runs
// meanwhile; ctx ends the wait if capture stops.
func notifyCopyReady(ctx context.Context, client *intercept.Client, log *slog.Logger) {
	status := "copying; control channel up"
	if !waitConnected(ctx, client, readyWait) {
		if ctx.Err() != nil {
			return
		}
		status = "copying; intercept agent unreachable, retrying"
	}
	// One datagram, so systemd never shows READY without its reason.
	if err := sdnotify.Notify("READY=1\nSTATUS=" + status); err != nil {
		log.Warn("sd_notify", "err", err)
	}
}

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

// captureLoop feeds captured packets to the engine through in until ctx
// is done or the capture ends, petting the watchdog as it goes.
func captureLoop(ctx context.Context, src capture.Source, in *tcpstate.Input, wd *watchdog) error {
	go func() {
		<-ctx.Done()
		src.Close()
	}()
	for {
		pkt, ts, err := src.Read()
		switch {
		case err == nil:
			in.Handle(pkt, ts)
			wd.packet()
		case errors.Is(err, capture.ErrTimeout):
			wd.idle()
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

// hasPortOnlyMap reports whether a map names only a port: its traffic is
// told from what passes by through the host's own addresses.
func hasPortOnlyMap(maps []tcpstate.Map) bool {
	for _, m := range maps {
		if !m.Local.Addr().IsValid() {
			return true
		}
	}
	return false
}
