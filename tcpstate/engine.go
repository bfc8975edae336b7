package tcpstate

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/compare"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// Engine runs the copy datapath. The capture goroutine hands it packets
// (HandleCaptured), the control-channel goroutine hands it reply headers
// (HandleReply); both are dispatched by flow hash to workers, each of which
// owns its sessions, so the per-packet path takes no lock. Queues are
// bounded and never block the caller: when a worker falls behind, packets
// are shed and counted.
type Engine struct {
	cfg    Config
	log    *slog.Logger
	start  time.Time
	loops  []*loop
	input  *Input   // HandleCaptured's
	repCtr counters // written by the reply goroutine only

	inMu   sync.Mutex  // guards inputs
	inputs []*counters // every Input's, for Stats

	sh     *shared
	liveMu sync.Mutex // serialises SetControls
}

// capPkt is a captured packet on its way to a worker: a copy of its bytes
// and where the engine found its headers, so the worker need not decode
// it again.
type capPkt struct {
	pb       *pktBuf
	capAt    int64
	lay      rewrite.Layout
	mapIdx   uint8
	copyIdx  uint8 // which of the connection's copies (Controls.Multiply)
	fromProd bool  // prod's packet to the client, cut after ProdPrefix bytes of payload
}

// replyMsg is a relayed reply header on its way to a worker, copied by
// value (a pointer would cost an allocation per reply).
type replyMsg struct {
	lay rewrite.Layout
	n   uint16
	hdr [MaxReplyLen]byte
}

// MaxReplyLen bounds a relayed reply: its headers and, when comparing,
// the first bytes of its payload.
const MaxReplyLen = rewrite.MaxHeadersLen + compare.MaxPrefix

type loop struct {
	w       *Worker
	ctr     counters
	pkts    chan capPkt
	replies chan replyMsg
	reply   replyMsg // the reply being handled: a field, so that it does not escape per message
}

// NewEngine builds an engine with one worker per sender. cfg is defaulted
// and validated here.
func NewEngine(cfg Config, senders []Sender, reg Registrar, log *slog.Logger) (*Engine, error) {
	cfg.Workers = len(senders)
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	for i := range cfg.Maps {
		m := &cfg.Maps[i]
		m.Local = unmapAddrPort(m.Local)
		m.Target = unmapAddrPort(m.Target)
	}
	if reg == nil {
		return nil, errors.New("no registrar")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &Engine{cfg: cfg, log: log, start: time.Now()}
	sh := &shared{log: log, hinted: make([]atomic.Bool, len(cfg.Maps))}
	sh.live.Store(newLive(cfg.Controls, len(senders)))
	e.sh = sh
	for i, s := range senders {
		l := &loop{
			pkts:    make(chan capPkt, cfg.QueueLen),
			replies: make(chan replyMsg, cfg.QueueLen),
		}
		l.w = newWorker(&e.cfg, i, len(senders), s, reg, &l.ctr, sh)
		if cfg.ComparePrefix > 0 && cfg.Recorders != nil {
			l.w.rec = cfg.Recorders[i]
		}
		e.loops = append(e.loops, l)
	}
	e.input = e.NewInput()
	return e, nil
}

func (e *Engine) now() int64 { return int64(time.Since(e.start)) }

// Run runs the workers until ctx is done, then ends every session with an
// RST to the shadow and returns.
func (e *Engine) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, l := range e.loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.run(ctx, e)
		}()
	}
	wg.Wait()
}

func (l *loop) run(ctx context.Context, e *Engine) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	var armed int64
	for {
		select {
		case <-ctx.Done():
			l.w.Shutdown(e.now())
			return
		case cp := <-l.pkts:
			l.captured(cp, e.now())
			l.drain(e)
		case l.reply = <-l.replies:
			l.w.handleReply(l.reply.hdr[:l.reply.n], l.reply.lay, e.now())
			l.drain(e)
		case <-t.C:
			armed = 0
		}
		now := e.now()
		l.w.Tick(now)
		l.w.Flush(now)
		if next := l.w.NextDeadline(); next != 0 && (armed == 0 || next < armed) {
			t.Reset(time.Duration(max(next-now, 0)))
			armed = next
		}
	}
}

func (l *loop) captured(cp capPkt, now int64) {
	if cp.fromProd {
		l.w.handleProd(cp.pb, cp.lay, cp.capAt, routeOf(cp.mapIdx, cp.copyIdx), now)
		return
	}
	l.w.handleCaptured(cp.pb, cp.lay, cp.capAt, routeOf(cp.mapIdx, cp.copyIdx), now)
}

// drainBatch bounds the events handled between two Flushes, and
// maxRepliesPerTurn the replies among them: a flood of relayed replies
// (a hostile or looping agent) cannot starve the captured packets, which
// are what is copied.
const (
	drainBatch        = 64
	maxRepliesPerTurn = drainBatch / 2
)

// drain handles what else is queued, up to a batch, before flushing.
func (l *loop) drain(e *Engine) {
	replies := 0
	for i := 0; i < drainBatch; i++ {
		if replies >= maxRepliesPerTurn {
			select {
			case cp := <-l.pkts:
				l.captured(cp, e.now())
				continue
			default:
			}
			if len(l.replies) > 0 {
				l.ctr.inc(CtrRepliesDeferred)
			}
			return
		}
		select {
		case cp := <-l.pkts:
			l.captured(cp, e.now())
		case l.reply = <-l.replies:
			replies++
			l.w.handleReply(l.reply.hdr[:l.reply.n], l.reply.lay, e.now())
		default:
			return
		}
	}
}

// ProdPrefix is how much of the payload of prod's packets reaches the
// worker: enough to tell what kind of answer prod gave, never the whole.
const ProdPrefix = 64

// Input is one capture goroutine's way into the engine. It decodes each
// packet once, tells a client's packet (to a map's local endpoint) from
// prod's (from it), and queues a copy, with its Layout, to the worker
// owning the flow. Queues never block for long: a full one is waited on
// for at most Config.QueueWait, then what does not fit is shed and counted.
// Each Input has counters of its own, so several capture
// goroutines (one per direction, fanned-out rings) feed one engine without
// sharing a cache line; an Input's methods must be called from one
// goroutine.
type Input struct {
	e   *Engine
	ctr *counters
}

// NewInput returns an Input for one more capture goroutine.
func (e *Engine) NewInput() *Input {
	c := new(counters)
	e.inMu.Lock()
	e.inputs = append(e.inputs, c)
	e.inMu.Unlock()
	return &Input{e: e, ctr: c}
}

// HandleCaptured is the engine's own Input's Handle, for a single capture
// goroutine.
func (e *Engine) HandleCaptured(pkt []byte, ts time.Time) { e.input.Handle(pkt, ts) }

// Handle takes one captured IP packet, valid only during the call. A
// client's packet must be whole; one of prod's may be cut short after its
// headers (a small snap length): only ProdPrefix bytes of its payload are
// kept (ComparePrefix if more), but all of it for a map compared as
// HTTP/2, whose frames the worker walks.
func (in *Input) Handle(pkt []byte, ts time.Time) {
	c, e := in.ctr, in.e
	c.inc(CtrCaptured)
	var p rewrite.Packet
	if err := p.DecodeHeader(pkt); err != nil {
		c.inc(decodeCounter(err))
		return
	}
	tcp := p.TCP()
	src, sport := p.SrcAddr(), tcp.SrcPort()
	dst, dport := p.DstAddr(), tcp.DstPort()
	l := e.sh.live.Load()
	matched := false
	for i := range e.cfg.Maps {
		m := &e.cfg.Maps[i]
		if !m.Matches(dst, dport) {
			continue
		}
		matched = true
		if !m.Local.Addr().IsValid() && e.cfg.IsLocal != nil && !e.cfg.IsLocal(dst) {
			// A port-only map copies what is addressed to this host,
			// not what a promiscuous NIC or a bridge passes by.
			c.inc(CtrIgnoredNotLocal)
			continue
		}
		if m.Target.Addr().Is4() == p.IsV6() {
			c.inc(CtrIgnoredFamily)
			continue
		}
		if len(p.Payload()) < p.PayloadLen() {
			c.inc(CtrIgnoredTruncated) // the client's bytes are what is copied
			return
		}
		if !in.sampled(l, src, sport) {
			if tcp.Flags()&(rewrite.FlagSYN|rewrite.FlagACK) == rewrite.FlagSYN {
				c.inc(CtrSkippedSample)
			}
			return
		}
		in.fanOut(&p, len(p.Bytes()), src, sport, ts, i, false, l)
	}
	if matched {
		return
	}
	for i := range e.cfg.Maps {
		m := &e.cfg.Maps[i]
		if !m.Matches(src, sport) || m.Target.Addr().Is4() == p.IsV6() {
			continue
		}
		if !m.Local.Addr().IsValid() && e.cfg.IsLocal != nil && !e.cfg.IsLocal(src) {
			continue
		}
		if !matched {
			matched = true
			c.inc(CtrFromProd)
		}
		if !in.sampled(l, dst, dport) {
			return
		}
		n := len(p.Headers()) + min(len(p.Payload()), max(ProdPrefix, e.cfg.ComparePrefix))
		if e.cfg.ComparePrefix > 0 && i < len(e.cfg.CompareProtocols) && e.cfg.CompareProtocols[i] == compare.HTTP2 {
			n = len(p.Bytes()) // whole: the worker walks its frames (h2pair.go)
		}
		in.fanOut(&p, n, dst, dport, ts, i, true, l)
	}
	if !matched {
		c.inc(CtrIgnoredNoMap)
	}
}

// sampled reports whether the connection of client addr:port may be
// copied: whether a share in effect since the start chose it. Its packets
// are dropped here otherwise, counted, before they cost a copy.
func (in *Input) sampled(l *live, addr netip.Addr, port uint16) bool {
	if l.hiThr == math.MaxUint64 || sampleHash(addr.As16(), port, l.c.SampleSeed) < l.hiThr {
		return true
	}
	in.ctr.inc(CtrIgnoredSkipped)
	return false
}

// fanOut queues the first n bytes of p once per copy of the connection
// of client addr:port (Controls.Multiply), each to the worker owning that
// copy's forged endpoint; a map sharing its traffic with others (Map.Of)
// takes only the copies its flow hash gives it.
func (in *Input) fanOut(p *rewrite.Packet, n int, addr netip.Addr, port uint16, ts time.Time, mapIdx int, fromProd bool, l *live) {
	e := in.e
	m := &e.cfg.Maps[mapIdx]
	for k := 0; k < l.fanout; k++ {
		if m.Of > 1 && targetOf(addr.As16(), port, k, e.cfg.Seed, m.Of) != m.Share {
			continue
		}
		forged := e.cfg.Pool.MapCopy(addr, k).As16()
		in.queue(p, n, forged, port, ts, mapIdx, k, fromProd)
	}
}

// queue copies the first n bytes of p to the worker owning the forged
// client endpoint forged:port.
func (in *Input) queue(p *rewrite.Packet, n int, forged [16]byte, port uint16, ts time.Time, mapIdx, copyIdx int, fromProd bool) {
	e, c := in.e, in.ctr
	l := e.loops[workerFor(forged, port, e.cfg.Seed, len(e.loops))]
	pb := getBuf(n)
	if pb == nil {
		c.inc(CtrIgnoredBadHeader)
		return
	}
	copy(pb.b, p.Bytes()[:n])
	cp := capPkt{pb: pb, capAt: ts.UnixNano(), lay: p.Layout(), mapIdx: uint8(mapIdx), copyIdx: uint8(copyIdx), fromProd: fromProd}
	select {
	case l.pkts <- cp:
		return
	default:
	}
	// Full: the worker is behind, most often because the capture had the
	// only P for a ring's burst, the other direction's capture took the
	// room first, or the host descheduled the worker's thread for a time
	// slice or two (a busy 2-core host: 2 ms was too short, and one shed
	// segment cuts a bulk stream). The kernel's ring holds far more than
	// this queue, so yield to the worker, then nap, for at most
	// Config.QueueWait before shedding: the worker never waits on the
	// shadow, so a slot frees within microseconds unless its thread is off
	// the CPU, and the wait never reaches prod.
	wait := e.cfg.QueueWait
	deadline := e.now() + int64(wait)
	// The count bounds the loop too, for a clock that does not move (tests).
	for try := 0; try < queueTries+int(wait/queueNap); try++ {
		if try < queueTries {
			runtime.Gosched()
		} else {
			time.Sleep(queueNap)
		}
		select {
		case l.pkts <- cp:
			return
		default:
		}
		if try > 0 && e.now() > deadline {
			break
		}
	}
	pb.free()
	c.inc(CtrShedQueue)
}

// A capture waiting on a full worker queue yields queueTries times
// first, then naps queueNap at a time, until Config.QueueWait.
const (
	queueTries = 64
	queueNap   = 50 * time.Microsecond
)

func decodeCounter(err error) Counter {
	switch {
	case errors.Is(err, rewrite.ErrTruncated):
		return CtrIgnoredTruncated
	case errors.Is(err, rewrite.ErrFragment):
		return CtrIgnoredFragment
	case errors.Is(err, rewrite.ErrNotTCP), errors.Is(err, rewrite.ErrVersion):
		return CtrIgnoredNotTCP
	case errors.Is(err, rewrite.ErrTooBig):
		return CtrIgnoredBigPacket
	case errors.Is(err, rewrite.ErrMapped):
		return CtrIgnoredMapped
	}
	return CtrIgnoredBadHeader
}

// HandleReply takes one relayed reply header (IP + TCP, payload absent),
// valid only during the call, and queues it to the worker owning the flow.
// Call it from one goroutine only.
func (e *Engine) HandleReply(hdr []byte) {
	c := &e.repCtr
	var p rewrite.Packet
	if len(hdr) > MaxReplyLen || p.DecodeHeader(hdr) != nil {
		c.inc(CtrRepliesBad)
		return
	}
	t := p.Tuple() // shadow → forged client
	l := e.loops[workerFor(t.Dst, t.DstPort, e.cfg.Seed, len(e.loops))]
	m := replyMsg{lay: p.Layout()}
	// All of it, not p.Bytes(): H2 records may run past the payload
	// length the IP header keeps (wire's doc).
	m.n = uint16(copy(m.hdr[:], hdr))
	select {
	case l.replies <- m:
	default:
		runtime.Gosched() // as in HandleCaptured
		select {
		case l.replies <- m:
		default:
			c.inc(CtrRepliesQueueFull)
		}
	}
}

// Stats returns a snapshot of every counter.
func (e *Engine) Stats() Snapshot {
	var s Snapshot
	e.inMu.Lock()
	for _, c := range e.inputs {
		s.addFrom(c)
	}
	e.inMu.Unlock()
	s.addFrom(&e.repCtr)
	s.Maps = make([]MapSnapshot, len(e.cfg.Maps))
	for i, m := range e.cfg.Maps {
		s.Maps[i].Map = m
	}
	for _, l := range e.loops {
		s.addFrom(&l.ctr)
		for i := range l.w.mapCtr {
			s.Maps[i].ShadowRejected += l.w.mapCtr[i].shadowRejected.Load()
		}
	}
	return s
}

// shared is what an engine's workers share: the logger, for the few
// lines that are not per packet, and which hints were logged. Atomics
// only.
type shared struct {
	log    *slog.Logger
	hinted []atomic.Bool // per map: the shadow-rejection hint was logged
	live   liveState     // the load-test controls in effect
}

// hintRejections logs, once per map, that the shadow rejects copied
// sessions, and the usual reason.
func (sh *shared) hintRejections(mapIdx uint8, m *Map) {
	if sh.hinted[mapIdx].Swap(true) {
		return
	}
	sh.log.Warn("the shadow keeps closing fresh connections before answering as prod did; "+
		"such client connections are no longer copied (counted in shadow_rejected): "+
		"a login with server nonces (SCRAM, MySQL's native password) cannot be replayed as is "+
		"unless the shadow accepts the same credentials",
		"map", m.String(), "after_reconnects", maxReconnects)
}

func unmapAddrPort(ap netip.AddrPort) netip.AddrPort {
	if !ap.Addr().IsValid() {
		return ap
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
