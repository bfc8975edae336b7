package tcpstate

import (
	"time"

	"github.com/tcpshadow/tcpshadow/internal/compare"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// Sender transmits IP packets toward the shadow. Send must not block and
// must not keep pkt after returning. Each worker owns its Sender.
type Sender interface {
	Send(pkt []byte) error
}

// Flusher is a Sender that queues packets; Flush sends them and reports
// how many the kernel refused. Workers flush at the end of every batch of
// events, so queued packets wait microseconds, not longer.
type Flusher interface {
	Flush() (failed int, err error)
}

// Registrar tells the intercept agent which forged flows belong to this
// daemon, so it relays their replies. Flows are in the copier → shadow
// direction. Both methods must not block.
type Registrar interface {
	Register(flow rewrite.Tuple)
	Deregister(flow rewrite.Tuple)
}

// Worker owns the sessions of the flows that hash to it. All methods run on
// one goroutine; times are monotonic nanoseconds from the caller's clock,
// which lets tests drive a Worker with a fake clock.
//
// Events (a captured packet, a relayed reply, a timer) change sessions and
// mark them dirty; Flush then sends what the changes made possible, once
// per batch of events.
type Worker struct {
	cfg      *Config
	id, n    int
	out      Sender
	flusher  Flusher // out, if it batches
	reg      Registrar
	ctr      *counters
	sessions map[sessionKey]*session    // by captured flow
	byForged map[rewrite.Tuple]*session // by forged flow: replies, old copies after a port reuse
	timers   timerHeap
	dirty    []*session
	buffered int64 // bytes held by this worker's sessions
	queued   int   // packets handed to a batching Sender since its last Flush
	budget   int64
	maxSess  int
	ctl      [rewrite.IPv6HeaderLen + rewrite.TCPMaxHeaderLen]byte // the copier's own segments are built here

	sh              *shared
	mapCtr          []mapCounters // per map, this worker's share
	prodResp        []respTime    // per map: prod's response times, as this worker saw them
	reconnectTokens tokenBucket   // fresh connections after the shadow closed (19, 32)
	newTokens       tokenBucket   // new sessions, under Controls.MaxNewSessions (46)
	skipped         skipSet       // connections the rate cap skipped (46)
	early           earlyProds    // prod's packets that came before their session
	fastOpen        map[*session]fastOpenData
	sleep           func(time.Duration)       // Shutdown's pacing; tests replace it
	rec             *compare.Recorder         // where paired requests go; nil: comparison off
	compared        int                       // sessions whose rounds are kept
	h2pair          compare.Pair              // h2Put's: a Pair is built here, not on the stack
	h2ev            [h2Events]compare.H2Event // a walk's events (h2pair.go)
	h2Streams       int                       // HTTP/2 streams pending on this worker's sessions
}

func newWorker(cfg *Config, id, n int, out Sender, reg Registrar, ctr *counters, sh *shared) *Worker {
	f, _ := out.(Flusher)
	return &Worker{
		cfg: cfg, id: id, n: n, out: out, flusher: f, reg: reg, ctr: ctr, sh: sh,
		sessions: make(map[sessionKey]*session),
		byForged: make(map[rewrite.Tuple]*session),
		budget:   cfg.MaxBufferBytes / int64(n),
		maxSess:  max(1, cfg.MaxSessions/n),
		mapCtr:   make([]mapCounters, len(cfg.Maps)),
		prodResp: make([]respTime, len(cfg.Maps)),
		fastOpen: make(map[*session]fastOpenData),
		sleep:    time.Sleep,
		skipped:  skipSet{ttl: int64(cfg.IdleTimeout)},
	}
}

// tokenBucket is a rate limit in a worker's clock: take spends one token
// of a bucket refilled at rate per second, holding a second's worth (at
// least one token, so that a rate below one a second still passes).
type tokenBucket struct {
	tokens float64
	at     int64
}

func (b *tokenBucket) take(now int64, rate float64) bool {
	room := max(rate, 1)
	if b.at != 0 {
		b.tokens = min(room, b.tokens+rate*float64(now-b.at)/1e9)
	} else {
		b.tokens = room
	}
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// workerFor picks the worker owning a forged client endpoint. Captured
// packets and relayed replies both carry it, so both reach the same worker
// without a shared table.
func workerFor(addr [16]byte, port uint16, seed uint64, n int) int {
	if n == 1 {
		return 0
	}
	return int(rewrite.HashAddrPort(addr, port, seed) % uint64(n))
}

// Sessions returns the number of sessions held, lingering ones and old
// copies finishing after a port reuse included.
func (w *Worker) Sessions() int { return len(w.byForged) }

// NextDeadline returns when Tick next has work, or 0.
func (w *Worker) NextDeadline() int64 { return w.timers.next() }

func (w *Worker) markDirty(s *session) {
	if !s.dirty {
		s.dirty = true
		w.dirty = append(w.dirty, s)
	}
}

// hold charges pb, now kept by s, to the buffer budgets.
func (w *Worker) hold(s *session, pb *pktBuf) { w.account(s, pb.size()) }

// release frees pb, kept by s until now, and returns its cost to the
// budgets.
func (w *Worker) release(s *session, pb *pktBuf) {
	n := pb.size()
	s.qBytes -= n
	w.buffered -= int64(n)
	pb.free()
}

// account adds n bytes (negative to release) to the session's and the
// worker's buffered totals. The exported gauge follows at each Flush.
func (w *Worker) account(s *session, n int) {
	s.qBytes += n
	w.buffered += int64(n)
}

// Flush sends what the events since the last Flush made possible: queued
// data, ACKs for the shadow's data, FINs; then reschedules timers.
func (w *Worker) Flush(now int64) {
	for i, s := range w.dirty {
		w.dirty[i] = nil
		s.dirty = false
		if s.heapIdx == heapRemoved {
			continue
		}
		if s.state.connected() {
			w.trySend(s, now)
			if s.needAck {
				w.sendCtl(s, rewrite.FlagACK, s.sndNxt, s.rcvNxt)
			}
		}
		s.needAck = false
		w.reschedule(s, now)
	}
	w.dirty = w.dirty[:0]
	w.ctr.buffered.Store(w.buffered)
	w.flushOut()
}

// flushOut sends what a batching Sender holds.
func (w *Worker) flushOut() {
	if w.flusher == nil {
		return
	}
	failed, _ := w.flusher.Flush()
	failed = min(failed, w.queued)
	w.ctr.add(CtrSendErrors, failed)
	w.ctr.add(CtrPacketsSent, w.queued-failed)
	w.queued = 0
}

// Shutdown pacing: RSTs leave in bursts of shutdownBurst, flushed, with
// shutdownGap between them and all of them within shutdownSpread, so that
// ending many sessions neither overflows the socket's buffer (the kernel
// would drop them, and the shadow keep the connections) nor floods the
// shadow.
const (
	shutdownBurst  = 64
	shutdownGap    = 500 * time.Microsecond
	shutdownSpread = 2 * time.Second
)

// Shutdown ends every session with an RST so the shadow frees its state,
// and deregisters every flow.
func (w *Worker) Shutdown(now int64) {
	gap := min(shutdownGap, shutdownSpread*shutdownBurst/time.Duration(max(len(w.byForged), 1)))
	sent := 0
	for _, s := range w.byForged {
		switch {
		case s.state == stateProdOpening:
		case !s.state.ended():
			w.endSession(s, EndShutdown, now)
			if sent++; sent%shutdownBurst == 0 {
				w.flushOut()
				w.sleep(gap)
			}
		}
		w.removeSession(s)
	}
	for i := range w.dirty {
		w.dirty[i] = nil
	}
	w.dirty = w.dirty[:0]
	w.ctr.buffered.Store(w.buffered)
	w.flushOut()
}
