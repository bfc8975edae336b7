package tcpstate

import (
	"sync"

	"github.com/tcpshadow/tcpshadow/internal/compare"
)

// HTTP/2 pairing, per stream (scenario 42). On a multiplexed connection
// the pacing's rounds say nothing of requests, so a map compared as
// http2 pairs by stream instead of by round: the client's HEADERS on
// stream S (walked in the client's bytes, which the copier has whole) is
// the request; prod's first final response HEADERS on S (walked in
// prod's bytes, captured whole for such maps) and the shadow's (the
// agent walks the shadow's replies and relays one H2 record per HEADERS
// or RST_STREAM) are the answers. The copier replays the client's bytes,
// so the shadow's connection numbers its streams as prod's does.
//
// Latencies: prod's from the capture of the segment ending the request's
// HEADERS frame to that of prod's response HEADERS; the shadow's from
// the copier sending that segment to the relayed record's arrival.
//
// A stream is handed to the comparison once both sides answered it (a
// status, or a stream reset: class rst_stream), or the connection ended
// on a side (reset, closed), or the shadow left it unanswered past
// ResponseTimeout (timeout). A walk that loses sync on any side (a
// segment missed by a capture) ends the connection's comparison: its
// pending streams are dropped, counted (compare_h2_lost), rather than
// paired wrong. Memory: a session's stream table is pooled, grown (by
// doubling, kept in the pool) only while the shadow lags that many
// streams behind prod, to maxH2Streams on a connection and
// maxH2WorkerStreams on a worker; a stream past them is not compared,
// counted (compare_overflow): evicting an older one would pair it wrong.

// Bounds of the pending streams: a connection's are those prod answered
// and the shadow not yet (the copier holds their requests while the
// pacing waits), so they follow the lag rather than the client's
// concurrency; 256 of about 200 bytes each, and 64 Ki on a worker
// (13 MiB).
const (
	maxH2Streams       = 256
	maxH2WorkerStreams = 1 << 16
	h2InitialStreams   = 16
)

// h2Events bounds the events one segment's walk reports: a super-packet
// of 64 KiB holds that many HEADERS only if its answers are tiny. A walk
// with more loses them, and the connection's comparison with them (as a
// lost sync): a stream missing its answer would be paired wrong.
const h2Events = 256

// h2Side is one side's answer to a stream. Prod's times are capture
// timestamps, the shadow's the worker's clock: only each side's
// difference is used.
type h2Side struct {
	sent, at int64 // the request's time on this side; the answer's
	status   uint16
	outcome  compare.Outcome
}

func (d *h2Side) settled() bool { return d.outcome != compare.NoAnswer }

// h2Stream is one request pending its answers.
type h2Stream struct {
	id     uint32
	born   uint32 // order of creation, for evicting the oldest
	opened int64  // when, on the worker's clock
	reqEnd Seq    // the client's stream past the request's segment: sent once the shadow has it
	hasReq bool
	reqLen uint8
	req    [compare.RequestHeadLen]byte // a HEADERS frame with the request's first block bytes
	prod   h2Side
	shadow h2Side
}

// h2Conn is a session's HTTP/2 pairing state.
type h2Conn struct {
	client, prod compare.H2Walker
	prodStarted  bool
	lost         bool // a walk lost sync: nothing more compared
	shadowGone   bool // the shadow's connection ended: later records are another connection's
	n            int
	born         uint32
	streams      []h2Stream // the first n pending; its length what is allocated
}

var h2Pool = sync.Pool{New: func() any { return &h2Conn{streams: make([]h2Stream, h2InitialStreams)} }}

// reset empties c for another connection, keeping its stream table.
func (c *h2Conn) reset() {
	st := c.streams
	clear(st[:c.n])
	*c = h2Conn{streams: st}
}

// h2Map reports whether map i is compared as HTTP/2.
func (w *Worker) h2Map(i uint8) bool {
	return int(i) < len(w.cfg.CompareProtocols) && w.cfg.CompareProtocols[i] == compare.HTTP2
}

// h2Comparing reports whether s is paired per stream, starting to if
// there is room: sessions of an HTTP/2 map opened by the client's own
// SYN (a joined connection's walk would begin mid-frame).
func (w *Worker) h2Comparing(s *session) bool {
	if s.h2 != nil {
		return !s.h2.lost
	}
	if w.rec == nil || s.compareSkipped || !w.h2Map(s.key.mapIdx) {
		return false
	}
	if s.opener != openedBySYN || w.compared >= maxComparedSessions {
		s.compareSkipped = true
		w.ctr.inc(CtrCompareSkipped)
		return false
	}
	c := h2Pool.Get().(*h2Conn)
	c.reset()
	c.client = compare.ClientH2Walker()
	c.client.Start(uint32(s.isn + 1))
	s.h2 = c
	w.compared++
	return true
}

func (c *h2Conn) find(id uint32) *h2Stream {
	for i := 0; i < c.n; i++ {
		if c.streams[i].id == id {
			return &c.streams[i]
		}
	}
	return nil
}

// h2Open returns a new stream id, or nil past the bounds (counted).
func (w *Worker) h2Open(s *session, id uint32, now int64) *h2Stream {
	c := s.h2
	if c.n == maxH2Streams || w.h2Streams >= maxH2WorkerStreams {
		w.ctr.inc(CtrCompareOverflow)
		return nil
	}
	if c.n == len(c.streams) {
		c.streams = append(c.streams, make([]h2Stream, min(len(c.streams), maxH2Streams-len(c.streams)))...)
	}
	w.h2Streams++
	st := &c.streams[c.n]
	c.n++
	c.born++
	*st = h2Stream{id: id, born: c.born, opened: now}
	return st
}

func (w *Worker) h2Remove(c *h2Conn, i int) {
	w.h2Streams--
	c.n--
	c.streams[i] = c.streams[c.n]
	c.streams[c.n] = h2Stream{}
}

// h2Request walks the client's new bytes at seq, captured at capAt,
// handled at now.
func (w *Worker) h2Request(s *session, seq Seq, payload []byte, capAt, now int64) {
	c := s.h2
	ev := &w.h2ev
	k := c.client.Walk(uint32(seq), payload, ev[:])
	if w.h2Lost(s, &c.client) {
		return
	}
	end := seq.Add(len(payload))
	for i := range k {
		e := &ev[i]
		if e.Kind != compare.H2EventHeaders {
			continue // the client resetting a stream: its answers still count
		}
		st := c.find(e.Stream)
		switch {
		case st == nil:
			if st = w.h2Open(s, e.Stream, now); st == nil {
				continue
			}
		case st.hasReq:
			continue // trailers
		}
		st.hasReq, st.reqEnd = true, end
		st.reqLen = uint8(len(compare.AppendH2Request(st.req[:0], e)))
		st.prod.sent = capAt
	}
	w.h2Flush(s, now)
}

// h2Sent notes that the client's stream up to end went to the shadow at
// now: the requests it completes are sent.
func (w *Worker) h2Sent(s *session, end Seq, now int64) {
	c := s.h2
	for i := 0; i < c.n; i++ {
		if st := &c.streams[i]; st.hasReq && st.shadow.sent == 0 && st.reqEnd.BeforeEq(end) {
			st.shadow.sent = now
		}
	}
}

// h2Prod walks prod's bytes at seq, captured at capAt.
func (w *Worker) h2Prod(s *session, seq Seq, payload []byte, capAt, now int64) {
	c := s.h2
	if !c.prodStarted {
		c.prodStarted = true
		if s.prodISNOK {
			c.prod.Start(uint32(s.prodISN + 1))
		}
	}
	ev := &w.h2ev
	k := c.prod.Walk(uint32(seq), payload, ev[:])
	if w.h2Lost(s, &c.prod) {
		return
	}
	for i := range k {
		e := &ev[i]
		status := compare.H2StatusReset
		if e.Kind == compare.H2EventHeaders {
			status = compare.H2Status(e.HeaderBlock())
		}
		st := c.find(e.Stream)
		if st == nil {
			// Prod's answer came before its request: the two directions
			// are captured apart.
			if st = w.h2Open(s, e.Stream, now); st == nil {
				continue
			}
		}
		h2Answer(&st.prod, status, capAt)
	}
	w.h2Flush(s, now)
}

// h2Shadow takes the H2 records of a reply relayed at now.
func (w *Worker) h2Shadow(s *session, recs []byte, now int64) {
	c := s.h2
	if c.shadowGone || len(recs) == 0 {
		return
	}
	if !compare.ValidH2Records(recs) {
		w.ctr.inc(CtrCompareH2Bad) // a prefix, not records: the agent does not walk this flow
		return
	}
	for len(recs) > 0 {
		r, rest, _ := compare.ParseH2Record(recs)
		recs = rest
		if r.Status == compare.H2StatusLost { // the agent's walk lost sync
			w.h2Drop(s)
			return
		}
		st := c.find(r.Stream)
		if st == nil || !st.hasReq {
			w.ctr.inc(CtrCompareUnpaired)
			continue
		}
		h2Answer(&st.shadow, r.Status, now)
	}
	w.h2Flush(s, now)
}

// h2Answer records a side's answer to a stream, unless it has one: the
// first final HEADERS (1xx are interim, RFC 9113 §8.1), or a reset.
func h2Answer(d *h2Side, status uint16, at int64) {
	if d.settled() || status >= 100 && status < 200 {
		return
	}
	d.status, d.at, d.outcome = status, at, compare.Answered
}

// h2Ended marks, for every stream without an answer on one side, how
// that side's connection ended.
func (w *Worker) h2Ended(s *session, shadow bool, o compare.Outcome, now int64) {
	c := s.h2
	if c == nil || c.lost {
		return
	}
	for i := 0; i < c.n; i++ {
		st := &c.streams[i]
		d := &st.prod
		if shadow {
			if st.shadow.sent == 0 {
				continue // never reached this connection of the shadow
			}
			d = &st.shadow
		}
		if !d.settled() {
			d.outcome = o
		}
	}
	if shadow {
		c.shadowGone = true
	}
	w.h2Flush(s, now)
}

// h2Lost reports whether walker wk lost sync or events, dropping the
// connection's comparison if so.
func (w *Worker) h2Lost(s *session, wk *compare.H2Walker) bool {
	if !wk.Lost() && wk.Dropped() == 0 {
		return false
	}
	w.h2Drop(s)
	return true
}

// h2Drop ends s's comparison: its pending streams go unpaired, counted.
func (w *Worker) h2Drop(s *session) {
	c := s.h2
	if c.lost {
		return
	}
	c.lost = true
	w.ctr.inc(CtrCompareH2Lost)
	w.h2Streams -= c.n
	clear(c.streams[:c.n])
	c.n = 0
}

// h2Flush hands over the streams settled on both sides, and those the
// shadow left unanswered past ResponseTimeout.
func (w *Worker) h2Flush(s *session, now int64) {
	c := s.h2
	for i := 0; i < c.n; {
		st := &c.streams[i]
		late := st.shadow.sent != 0 && now-st.shadow.sent > int64(w.cfg.ResponseTimeout)
		orphan := !st.hasReq && now-st.opened > int64(w.cfg.ResponseTimeout)
		switch {
		case orphan:
			// Prod answered a request the copier never saw (the
			// client's packet was lost to the capture): nothing to pair.
		case !st.hasReq || st.shadow.sent == 0:
			i++
			continue
		case !(st.prod.settled() && st.shadow.settled()) && !late:
			i++
			continue
		default:
			w.h2Put(s, st)
		}
		w.h2Remove(c, i)
	}
}

// h2End hands over s's streams that reached the shadow, as they stand,
// and releases its state: the session is going.
func (w *Worker) h2End(s *session) {
	c := s.h2
	if c == nil {
		return
	}
	for i := 0; i < c.n; i++ {
		if st := &c.streams[i]; st.hasReq && st.shadow.sent != 0 {
			w.h2Put(s, st)
		}
	}
	w.h2Streams -= c.n
	c.reset()
	h2Pool.Put(c)
	s.h2 = nil
	w.compared--
}

// h2Put hands one stream to the comparison as a Pair: its request's
// HEADERS frame, and each side's answer as a frame the classifiers read.
func (w *Worker) h2Put(s *session, st *h2Stream) {
	p := &w.h2pair
	*p = compare.Pair{Map: uint16(s.key.mapIdx), Client: s.key.client.SrcAddrPort()}
	p.SetRequest(st.req[:st.reqLen])
	for _, side := range [...]struct {
		d *h2Side
		r *compare.Response
	}{{&st.prod, &p.Prod}, {&st.shadow, &p.Shadow}} {
		side.r.Sent, side.r.Outcome = side.d.sent, side.d.outcome
		if side.d.outcome == compare.Answered {
			var f [16]byte
			side.r.SetHead(compare.H2StatusFrame(&f, st.id, side.d.status))
			side.r.FirstByte = side.d.at
		}
	}
	if w.rec.Put(p) {
		w.ctr.inc(CtrComparePairs)
	} else {
		w.ctr.inc(CtrCompareDropped)
	}
}

// pairClient takes the client's new bytes at seq (ACK ack), captured at
// capAt, handled at now: a map compared as HTTP/2 pairs them per stream,
// others by round.
func (w *Worker) pairClient(s *session, seq, ack Seq, payload []byte, capAt, now int64) {
	if w.h2Map(s.key.mapIdx) {
		if len(payload) > 0 && w.h2Comparing(s) {
			w.h2Request(s, seq, payload, capAt, now)
		}
		return
	}
	w.pairRequest(s, ack, payload, capAt)
}

// pairProdData takes prod's bytes at seq, captured at capAt.
func (w *Worker) pairProdData(s *session, seq Seq, payload []byte, capAt, now int64) {
	if w.h2Map(s.key.mapIdx) {
		if len(payload) > 0 && w.h2Comparing(s) {
			w.h2Prod(s, seq, payload, capAt, now)
		}
		return
	}
	w.pairProd(s, seq, payload, capAt, now)
}
