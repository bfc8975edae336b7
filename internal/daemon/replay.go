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
	"github.com/tcpshadow/tcpshadow/internal/metrics"
	"github.com/tcpshadow/tcpshadow/internal/pcapdump"
	"github.com/tcpshadow/tcpshadow/internal/replay"
	"github.com/tcpshadow/tcpshadow/tcpstate"
)

// ReplayConfig configures a replay of capture files against the shadow.
type ReplayConfig struct {
	// Copy is what a copy daemon would run with: the replay's engine,
	// control channel, comparison, send path, budgets, metrics and dump
	// come from it exactly as the copy daemon's do (so whatever shapes
	// the copy daemon's engine, such as its flags, shapes the replay's);
	// its capture and mirror are not used: the files are the capture.
	Copy  CopyConfig
	Files []string // pcap or pcapng files, or directories of them, in play order
	// Speed divides the files' time: at 2, each session's packets go
	// twice as fast, and so do prod's answers in the files, which the
	// pacing measures the shadow against.
	Speed float64
	Loop  int // passes over the files
	// Settle is how long the replay waits, once the files are played,
	// with nothing sent to the shadow before it stops: sessions the
	// files do not end are reset then.
	Settle time.Duration
	// Progress receives the progress as it goes; nil: none. On a
	// Terminal it is a bar redrawn in place four times a second,
	// otherwise a line every ProgressEvery.
	Progress      io.Writer
	Terminal      bool
	ProgressEvery time.Duration
}

// Replay defaults.
const (
	// replayLead is how long after the engine and the control channel
	// are up the files' first packet is due.
	replayLead = 100 * time.Millisecond
	// replayPassGapExtra is added to the engine's linger between passes.
	replayPassGapExtra = time.Second
	// agentWait bounds how long a replay waits for the control channel:
	// without it no reply of the shadow reaches the engine, and nothing
	// can be replayed.
	agentWait = 10 * time.Second
	barEvery  = 250 * time.Millisecond
)

// DefaultReplayConfig returns a replay's defaults: the copy daemon's,
// one pass at the speed of the capture.
func DefaultReplayConfig() ReplayConfig {
	return ReplayConfig{Copy: DefaultCopyConfig(), Speed: 1, Loop: 1, Settle: 2 * time.Second, ProgressEvery: 10 * time.Second}
}

// replayInterface stands in for the capture's interface in the copy
// daemon's checks, which a replay passes but for the capture.
const replayInterface = "(replay)"

// Validate checks the configuration; errors are *FieldError.
func (c *ReplayConfig) Validate() error {
	if len(c.Files) == 0 {
		return fieldErr("Files", nil, "want at least one capture file")
	}
	if !(c.Speed > 0 && c.Speed <= replay.MaxSpeed) {
		return fieldErr("Speed", c.Speed, fmt.Sprintf("want more than 0 and at most %d", replay.MaxSpeed))
	}
	if c.Loop < 1 || c.Loop > 255 {
		// A pass moves the clients' addresses by its number in one byte.
		return fieldErr("Loop", c.Loop, "want 1..255")
	}
	if c.Settle < 0 {
		return fieldErr("Settle", c.Settle, "must not be negative")
	}
	if c.Copy.mirrored() {
		return fieldErr("Copy.Mirror.Proto", c.Copy.Mirror.Proto, "a replay reads files, not a mirror session")
	}
	if c.Terminal || c.Progress != nil {
		if c.ProgressEvery <= 0 {
			return fieldErr("ProgressEvery", c.ProgressEvery, "must be positive")
		}
	}
	cc := c.Copy
	if cc.Capture.Interface == "" {
		cc.Capture.Interface = replayInterface
	}
	err := cc.Validate()
	var fe *FieldError
	if errors.As(err, &fe) {
		return &FieldError{Field: "Copy." + fe.Field, Value: fe.Value, Err: fe.Err}
	}
	return err
}

// RunReplay plays the files through the copy daemon's engine to the
// shadow, then returns what it did; ctx's end stops it early (not an
// error). Every file is read whole first: a bad one fails the replay
// before anything is sent, with an error naming it and the offset
// (*pcapfile.FormatError).
//
// Start order: the files' check; the process budgets; the senders; the
// comparison, the control channel's client and the engine; the metrics
// endpoint; then, once the control channel is up, the player. Stop
// order, once the files are played and the shadow has settled (or ctx is
// done): the engine (resetting what is still open on the shadow), the
// comparison, the client after its deregistrations, the senders, the
// dump.
func RunReplay(ctx context.Context, cfg ReplayConfig, log *slog.Logger) (replay.Progress, error) {
	return runReplay(ctx, cfg, log, liveHost())
}

func runReplay(ctx context.Context, cfg ReplayConfig, log *slog.Logger, h host) (replay.Progress, error) {
	if err := cfg.Validate(); err != nil {
		return replay.Progress{}, err
	}
	paths, err := replay.Expand(cfg.Files)
	if err != nil {
		return replay.Progress{}, inField("Files", err)
	}
	files, err := replay.Scan(paths)
	if err != nil {
		return replay.Progress{}, err
	}
	ccfg := &cfg.Copy
	ecfg := ccfg.EngineConfig() // IsLocal stays nil: a file's addresses are not this host's
	player, err := replay.NewPlayer(replay.Config{
		Files: files, Speed: cfg.Speed, Loop: cfg.Loop, Lead: replayLead,
		PassGap:  ecfg.Linger + replayPassGapExtra,
		IsServer: serverOf(ecfg.Maps),
	})
	if err != nil {
		return replay.Progress{}, err
	}
	dump, err := openDump(ccfg.Dump, log)
	if err != nil {
		return replay.Progress{}, err
	}
	if dump != nil {
		defer dump.Close() // closed last: after the engine's final RSTs
	}
	h.limit(ccfg.MaxCPU, ccfg.MaxMemory)
	openSender, sendSamples, stopSend, err := ccfg.senders(h, log)
	if err != nil {
		return replay.Progress{}, err
	}
	defer stopSend()
	var lastSent atomic.Int64 // wall time of the last packet sent, ns
	senders := make([]tcpstate.Sender, ecfg.Workers)
	for i := range senders {
		s, closer, err := openSender()
		if err != nil {
			return replay.Progress{}, err
		}
		defer closer.Close()
		if dump != nil {
			s = pcapdump.TeeSender(s, dump)
		}
		senders[i] = stampSender(s, &lastSent)
	}
	cmpCtx, stopCompare := context.WithCancel(context.Background())
	defer stopCompare()
	cmp, cmpDone, err := startCompare(cmpCtx, ccfg.Compare, &ecfg, log)
	if err != nil {
		return replay.Progress{}, inField("Copy.Compare", err)
	}
	var eng *tcpstate.Engine
	client := intercept.NewClient(ccfg.ClientConfig(), func(hdr []byte) { eng.HandleReply(hdr) }, log)
	eng, err = tcpstate.NewEngine(ecfg, senders, client, log)
	if err != nil {
		return replay.Progress{}, inField("Copy.Engine", err)
	}
	src := playerSource{player}
	samples := func() []metrics.Sample {
		out := append(CopySamples(eng, client, src, nil), DumpSamples(dump)...)
		out = append(append(out, ControlSamples(eng)...), sendSamples()...)
		if cmp != nil {
			out = append(out, cmp.Samples()...)
		}
		return out
	}
	if ccfg.MetricsAddr != "" {
		var handlers map[string]http.Handler
		if cmp != nil {
			handlers = cmp.Handlers()
		}
		if err := metrics.ServeWith(ctx, ccfg.MetricsAddr, samples, ccfg.Pprof, handlers, log); err != nil {
			return replay.Progress{}, inField("Copy.MetricsAddr", err)
		}
	}
	progress := func() replay.Progress {
		pr := player.Progress()
		addEngine(&pr, eng.Stats())
		if at := lastSent.Load(); at != 0 && !player.Origin().IsZero() {
			pr.LastSent = max(time.Unix(0, at).Sub(player.Origin()), 0)
		}
		return pr
	}

	clientCtx, stopClient := context.WithCancel(context.Background())
	defer stopClient()
	engCtx, stopEngine := context.WithCancel(context.Background())
	defer stopEngine()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = client.Run(clientCtx) }()
	engDone := make(chan struct{})
	go func() { defer wg.Done(); defer close(engDone); eng.Run(engCtx) }()
	stop := func() {
		stopEngine()
		<-engDone
		if cmp != nil {
			stopCompare()
			<-cmpDone
		}
		flushCtx, cancelFlush := context.WithTimeout(context.Background(), deregisterBound)
		_ = client.Flush(flushCtx)
		cancelFlush()
		stopClient()
		wg.Wait()
	}

	if !waitConnected(ctx, client, agentWait) {
		stop()
		if ctx.Err() != nil {
			return progress(), nil
		}
		return replay.Progress{}, inField("Copy.Client.Addr", fmt.Errorf("intercept agent %s unreachable for %v: the shadow's replies would not reach the replay", ccfg.Client.Addr, agentWait))
	}
	first, span := replay.Span(files)
	log.Info("replaying", "files", len(files), "from", time.Unix(0, first).UTC().Format(time.RFC3339Nano),
		"length", time.Duration(span).String(), "speed", cfg.Speed, "loop", cfg.Loop,
		"maps", fmt.Sprint(ecfg.Maps), "agent", ccfg.Client.Addr, "workers", ecfg.Workers)

	progCtx, stopProgress := context.WithCancel(context.Background())
	progDone := make(chan struct{})
	go func() { defer close(progDone); showProgress(progCtx, &cfg, progress) }()

	in := eng.NewInput()
	err = player.Run(ctx, func(ip []byte, at time.Time) { in.Handle(ip, at) })
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		err = nil
	}
	if err == nil && ctx.Err() == nil {
		settle(ctx, eng, &lastSent, cfg.Settle)
	}
	stopProgress()
	<-progDone
	stop()
	pr := progress() // with the rounds the engine's stop ended
	log.Info("replayed", "summary", metrics.Summary(samples(), metricPrefix))
	return pr, err
}

// serverOf returns whether an endpoint is a map's local one: the server
// the files' clients talked to.
func serverOf(maps []tcpstate.Map) func(netip.Addr, uint16) bool {
	return func(a netip.Addr, port uint16) bool {
		for i := range maps {
			if maps[i].Matches(a, port) {
				return true
			}
		}
		return false
	}
}

// settle waits until every session has ended, or nothing was sent to
// the shadow for quiet: what the files hold has then gone out, but for
// sessions the files cut short, which the engine's stop resets.
func settle(ctx context.Context, eng *tcpstate.Engine, lastSent *atomic.Int64, quiet time.Duration) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	since := time.Now()
	for {
		st := eng.Stats()
		open := int64(0)
		st.EachState(func(state string, n int64) {
			if state != "closed" {
				open += n
			}
		})
		last := time.Unix(0, max(lastSent.Load(), since.UnixNano()))
		if open == 0 || time.Since(last) >= quiet {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// addEngine fills in the engine's side of a replay's progress.
func addEngine(pr *replay.Progress, st tcpstate.Snapshot) {
	pr.Sessions = st.Get(tcpstate.CtrSessionsStarted)
	pr.Joined = st.Get(tcpstate.CtrJoinedMidstream)
	// The comparison pairs every request; the pacing counts those after
	// each connection's first (which waits for nothing).
	pr.Requests = max(st.Get(tcpstate.CtrRequests), st.Get(tcpstate.CtrComparePairs)+st.Get(tcpstate.CtrCompareDropped))
	pr.SentBytes = st.Get(tcpstate.CtrBytesSent)
	if n := st.Get(tcpstate.CtrRequests); n > 0 {
		pr.PacingDrift = time.Duration(st.Get(tcpstate.CtrDriftMicros)/n) * time.Microsecond
	}
	for _, c := range []tcpstate.Counter{
		tcpstate.CtrIgnoredTruncated, tcpstate.CtrIgnoredBadHeader, tcpstate.CtrIgnoredFragment,
		tcpstate.CtrIgnoredNotTCP, tcpstate.CtrIgnoredNoMap, tcpstate.CtrIgnoredFamily,
		tcpstate.CtrIgnoredBigPacket, tcpstate.CtrIgnoredMapped,
	} {
		pr.Ignored += st.Get(c)
	}
	for _, c := range []tcpstate.Counter{tcpstate.CtrShedQueue, tcpstate.CtrShedSessions, tcpstate.CtrShedMemory, tcpstate.CtrShedPorts} {
		pr.Shed += st.Get(c)
	}
}

// showProgress renders the replay's progress until ctx is done, then a
// last time.
func showProgress(ctx context.Context, cfg *ReplayConfig, progress func() replay.Progress) {
	if cfg.Progress == nil {
		return
	}
	every := cfg.ProgressEvery
	if cfg.Terminal {
		every = barEvery
	}
	t := time.NewTicker(every)
	defer t.Stop()
	draw := func() {
		pr := progress()
		if cfg.Terminal {
			fmt.Fprintf(cfg.Progress, "\r\033[K%s", pr.Bar())
		} else {
			fmt.Fprintln(cfg.Progress, pr.Line())
		}
	}
	for {
		select {
		case <-ctx.Done():
			draw()
			if cfg.Terminal {
				fmt.Fprintln(cfg.Progress)
			}
			return
		case <-t.C:
			draw()
		}
	}
}

// stampSender notes the time of every packet carrying data that s
// accepts (the files' requests, not the engine's own ACKs, FINs and
// RSTs, which follow the shadow's timing); a batching sender stays one.
func stampSender(s tcpstate.Sender, at *atomic.Int64) tcpstate.Sender {
	st := stamped{Sender: s, at: at}
	if f, ok := s.(tcpstate.Flusher); ok {
		return stampedFlusher{stamped: st, Flusher: f}
	}
	return st
}

type stamped struct {
	tcpstate.Sender
	at *atomic.Int64
}

func (s stamped) Send(pkt []byte) error {
	err := s.Sender.Send(pkt)
	if err == nil && hasPayload(pkt) {
		s.at.Store(time.Now().UnixNano())
	}
	return err
}

// hasPayload reports whether an IPv4 or IPv6 TCP packet (no IPv6
// extension headers: the engine builds none) carries data.
func hasPayload(pkt []byte) bool {
	var ipLen, total int
	switch {
	case len(pkt) >= 20 && pkt[0]>>4 == 4:
		ipLen, total = int(pkt[0]&0x0f)*4, int(pkt[2])<<8|int(pkt[3])
	case len(pkt) >= 40 && pkt[0]>>4 == 6:
		ipLen, total = 40, 40+(int(pkt[4])<<8|int(pkt[5]))
	default:
		return false
	}
	if len(pkt) < ipLen+13 {
		return false
	}
	return total > ipLen+int(pkt[ipLen+12]>>4)*4
}

type stampedFlusher struct {
	stamped
	tcpstate.Flusher
}

// playerSource presents the player's counters as a capture's, for the
// copy daemon's metrics; it is never read.
type playerSource struct{ p *replay.Player }

func (s playerSource) Read() ([]byte, time.Time, error) { return nil, time.Time{}, io.EOF }
func (s playerSource) Close() error                     { return nil }
func (s playerSource) Stats() capture.Stats {
	pr := s.p.Progress()
	return capture.Stats{Read: pr.Packets, NonIP: pr.NonIP, OtherHost: pr.OtherHost}
}
