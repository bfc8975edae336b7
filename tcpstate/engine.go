package tcpstate

import (
	"context"
	"errors"
	"net/netip"
	"runtime"
	"sync"
	"time"

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
	start  time.Time
	loops  []*loop
	capCtr counters // written by the capture goroutine only
	repCtr counters // written by the reply goroutine only
}

// capPkt is a captured packet on its way to a worker: a copy of its bytes
// and where the engine found its headers, so the worker need not decode
// it again.
type capPkt struct {
	pb     *pktBuf
	capAt  int64
	lay    rewrite.Layout
	mapIdx uint8
}

// replyMsg is a relayed reply header on its way to a worker, copied by
// value (a pointer would cost an allocation per reply).
type replyMsg struct {
	lay rewrite.Layout
	n   uint8
	hdr [rewrite.MaxHeadersLen]byte
}

type loop struct {
	w       *Worker
	ctr     counters
	pkts    chan capPkt
	replies chan replyMsg
	reply   replyMsg // the reply being handled: a field, so that it does not escape per message
}

// NewEngine builds an engine with one worker per sender. cfg is defaulted
// and validated here.
func NewEngine(cfg Config, senders []Sender, reg Registrar) (*Engine, error) {
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
	e := &Engine{cfg: cfg, start: time.Now()}
	for i, s := range senders {
		l := &loop{
			pkts:    make(chan capPkt, cfg.QueueLen),
			replies: make(chan replyMsg, cfg.QueueLen),
		}
		l.w = newWorker(&e.cfg, i, len(senders), s, reg, &l.ctr)
		e.loops = append(e.loops, l)
	}
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
			l.w.handleCaptured(cp.pb, cp.lay, cp.capAt, int(cp.mapIdx), e.now())
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

// drain handles what else is queued, up to a batch, before flushing.
func (l *loop) drain(e *Engine) {
	for i := 0; i < 64; i++ {
		select {
		case cp := <-l.pkts:
			l.w.handleCaptured(cp.pb, cp.lay, cp.capAt, int(cp.mapIdx), e.now())
		case l.reply = <-l.replies:
			l.w.handleReply(l.reply.hdr[:l.reply.n], l.reply.lay, e.now())
		default:
			return
		}
	}
}

// HandleCaptured takes one captured IP packet, valid only during the call,
// and queues a copy to the worker owning its flow. Call it from one
// goroutine only.
func (e *Engine) HandleCaptured(pkt []byte, ts time.Time) {
	c := &e.capCtr
	c.inc(CtrCaptured)
	var p rewrite.Packet
	if err := p.Decode(pkt); err != nil {
		c.inc(decodeCounter(err))
		return
	}
	dst, dport := p.DstAddr(), p.TCP().DstPort()
	matched := false
	for i := range e.cfg.Maps {
		m := &e.cfg.Maps[i]
		if !m.Matches(dst, dport) {
			continue
		}
		matched = true
		if m.Target.Addr().Is4() == p.IsV6() {
			c.inc(CtrIgnoredFamily)
			continue
		}
		src := p.SrcAddr()
		forged := e.cfg.Pool.Map(src).As16()
		l := e.loops[workerFor(forged, p.TCP().SrcPort(), e.cfg.Seed, len(e.loops))]
		pb := getBuf(len(p.Bytes()))
		if pb == nil {
			c.inc(CtrIgnoredBadHeader)
			return
		}
		copy(pb.b, p.Bytes())
		cp := capPkt{pb: pb, capAt: ts.UnixNano(), lay: p.Layout(), mapIdx: uint8(i)}
		select {
		case l.pkts <- cp:
		default:
			// Full: most often because the capture has had the CPU for a
			// whole ring's burst while the workers waited for it (one P).
			// Yield once so they drain, then shed if still full: never
			// block on a slow shadow.
			runtime.Gosched()
			select {
			case l.pkts <- cp:
			default:
				pb.free()
				c.inc(CtrShedQueue)
			}
		}
	}
	if !matched {
		c.inc(CtrIgnoredNoMap)
	}
}

func decodeCounter(err error) Counter {
	switch {
	case errors.Is(err, rewrite.ErrTruncated):
		return CtrIgnoredTruncated
	case errors.Is(err, rewrite.ErrFragment):
		return CtrIgnoredFragment
	case errors.Is(err, rewrite.ErrNotTCP), errors.Is(err, rewrite.ErrVersion):
		return CtrIgnoredNotTCP
	}
	return CtrIgnoredBadHeader
}

// HandleReply takes one relayed reply header (IP + TCP, payload absent),
// valid only during the call, and queues it to the worker owning the flow.
// Call it from one goroutine only.
func (e *Engine) HandleReply(hdr []byte) {
	c := &e.repCtr
	var p rewrite.Packet
	if len(hdr) > rewrite.MaxHeadersLen || p.DecodeHeader(hdr) != nil {
		c.inc(CtrRepliesBad)
		return
	}
	t := p.Tuple() // shadow → forged client
	l := e.loops[workerFor(t.Dst, t.DstPort, e.cfg.Seed, len(e.loops))]
	m := replyMsg{lay: p.Layout()}
	m.n = uint8(copy(m.hdr[:], p.Bytes()))
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
	s.addFrom(&e.capCtr)
	s.addFrom(&e.repCtr)
	for _, l := range e.loops {
		s.addFrom(&l.ctr)
	}
	return s
}

func unmapAddrPort(ap netip.AddrPort) netip.AddrPort {
	if !ap.Addr().IsValid() {
		return ap
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
