package tcpstate

import (
	"time"

	"github.com/tcpshadow/tcpshadow/internal/compare"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// Prod's side: the packets prod sends the client on a copied flow, cut
// after a short prefix of their payload. They say what prod accepted
// (its SYN-ACK, its ACKs of the client's data: only that is copied,
// scenario 33), when prod answered (the client's think time and prod's
// response times drive the pacing, 8 and 9), and when prod reset the
// connection. Nothing of them is sent anywhere.

// handleProd processes one of prod's packets to a client, held in pb (its
// payload cut to ProdPrefix bytes), which is freed here: the one release
// point of prod's packets.
func (w *Worker) handleProd(pb *pktBuf, lay rewrite.Layout, capAt int64, r route, now int64) {
	p := lay.View(pb.b)
	w.prodPacket(&p, capAt, r, now)
	pb.free()
}

func (w *Worker) prodPacket(p *rewrite.Packet, capAt int64, r route, now int64) {
	key := sessionKey{client: p.Tuple().Reverse(), mapIdx: r.mapIdx(), copy: r.copyIdx()}
	tcp := p.TCP()
	flags := tcp.Flags()
	seq, ack := Seq(tcp.Seq()), Seq(tcp.Ack())
	s := w.sessions[key]
	if s != nil && s.state == stateClosed && (s.rounds != nil || s.h2 != nil) {
		// An ended session's rounds wait for prod's answers.
		if plen := p.PayloadLen(); plen > 0 {
			w.pairProdData(s, seq, p.Payload(), capAt, now)
		}
	}
	if s == nil || s.state == stateClosed {
		w.ctr.inc(CtrProdNoSession)
		if s == nil && flags&(rewrite.FlagACK|rewrite.FlagRST) == rewrite.FlagACK {
			var data []byte
			if w.rec != nil && flags&rewrite.FlagSYN == 0 {
				data = p.Payload() // an answer overtaking the whole handshake, for the comparison
			}
			w.early.remember(key, seq, ack, flags&rewrite.FlagSYN != 0, data, capAt, now)
		}
		return
	}
	if flags&rewrite.FlagRST != 0 {
		w.prodReset(s, seq, capAt, now)
		return
	}
	if flags&rewrite.FlagSYN != 0 {
		tookData := s.fastOpen && ack == (s.isn+1).Add(w.fastOpen[s].len) // prod took the fast-open data
		if flags&rewrite.FlagACK == 0 || ack != s.isn+1 && !tookData || s.opener != openedBySYN {
			return // not the answer to this session's SYN
		}
		s.prodISN, s.prodISNOK = seq, true
	}
	if flags&rewrite.FlagACK != 0 && (!s.prodAckOK || ack.After(s.prodAcked)) {
		s.prodAcked, s.prodAckOK = ack, true
		w.markDirty(s) // vouched data may go
	}
	w.checkAccepted(s, now)
	if plen := p.PayloadLen(); plen > 0 {
		start := seq
		if flags&rewrite.FlagSYN != 0 {
			start++
		}
		s.markProdData(start.Add(plen), capAt)
		if w.rec != nil {
			w.pairProdData(s, start, p.Payload(), capAt, now)
		}
		if s.prodWaitFrom != 0 {
			w.prodAnswered(s, time.Duration(capAt-s.prodWaitFrom))
			s.prodWaitFrom = 0
		}
	}
	if flags&rewrite.FlagFIN != 0 {
		s.prodFin = true
		w.pairProdEnded(s, seq.Add(p.PayloadLen()), compare.Closed, now)
	}
}

// earlyProd is one of prod's packets that reached the worker before the
// client's packet that opens its session: the two directions are captured
// apart, and prod's SYN-ACK or ACK can overtake, by a block of the
// capture ring, the packet it answers. It is remembered a short while.
type earlyProd struct {
	key    sessionKey
	seq    Seq
	ack    Seq
	synAck bool
	at     int64
	// The first of prod's data segments among them, when comparing: on
	// connections as short as one request, the whole exchange can fit
	// in one block of prod's capture ring, delivered before the client's.
	dataSeq Seq
	dataAt  int64
	dataLen uint16
	data    [compare.MaxPrefix]byte
}

const (
	earlySlots = 1024
	earlyTTL   = int64(time.Second)
)

// earlyProds remembers earlyProd by flow, the oldest forgotten first when
// earlySlots are taken.
type earlyProds struct {
	m    map[sessionKey]earlyProd
	fifo [earlySlots]sessionKey // insertion order
	head int
	n    int
}

func (e *earlyProds) remember(key sessionKey, seq, ack Seq, synAck bool, data []byte, capAt, now int64) {
	if e.m == nil {
		e.m = make(map[sessionKey]earlyProd, earlySlots)
	}
	if _, ok := e.m[key]; !ok {
		if e.n == earlySlots {
			delete(e.m, e.fifo[e.head])
			e.head = (e.head + 1) % earlySlots
			e.n--
		}
		e.fifo[(e.head+e.n)%earlySlots] = key
		e.n++
	}
	old := e.m[key]
	ep := earlyProd{key: key, seq: seq, ack: ack, synAck: synAck, at: now}
	switch {
	case old.dataLen > 0 && now-old.at <= earlyTTL:
		ep.dataSeq, ep.dataAt, ep.dataLen, ep.data = old.dataSeq, old.dataAt, old.dataLen, old.data
	case len(data) > 0:
		ep.dataSeq, ep.dataAt = seq, capAt
		ep.dataLen = uint16(copy(ep.data[:], data))
	}
	e.m[key] = ep
}

// recall returns, and forgets, what was remembered for key lately.
func (e *earlyProds) recall(key sessionKey, now int64) (earlyProd, bool) {
	got, ok := e.m[key]
	if !ok {
		return earlyProd{}, false
	}
	delete(e.m, key) // its fifo slot is reused in turn
	return got, now-got.at <= earlyTTL
}

// applyEarly takes over what prod sent before s existed.
func (w *Worker) applyEarly(s *session, now int64) {
	ep, ok := w.early.recall(s.key, now)
	if !ok {
		return
	}
	if ep.synAck && s.opener == openedBySYN && ep.ack == s.isn+1 {
		s.prodISN, s.prodISNOK = ep.seq, true
	}
	if !s.prodAckOK || ep.ack.After(s.prodAcked) {
		s.prodAcked, s.prodAckOK = ep.ack, true
	}
	if ep.dataLen > 0 && w.rec != nil {
		w.pairProdData(s, ep.dataSeq, ep.data[:ep.dataLen], ep.dataAt, now)
	}
}

// checkAccepted opens s on the shadow once prod has accepted its
// connection (scenario 33): prod's SYN-ACK and the client's ACK of it, in
// either order; or, should prod's SYN-ACK have been missed, prod
// acknowledging the client's data after the client's ACK; or, for a
// connection older than the capture, prod acknowledging its data.
func (w *Worker) checkAccepted(s *session, now int64) {
	if s.state != stateProdOpening {
		return
	}
	if s.opener == openedByJoin {
		if q := s.q(); len(q) > 0 && s.prodAckOK && s.prodAcked.After(q[0].seq) {
			w.prodAccepted(s, now)
		}
		return
	}
	if !s.clientAckOK {
		return
	}
	if (s.prodISNOK && s.clientAcked == s.prodISN+1) || (s.prodAckOK && s.prodAcked.After(s.isn+1)) {
		if !s.baseOK {
			// Prod's stream starts where the client's handshake ACK
			// points: its ISN + 1.
			s.prodBase, s.baseOK = s.clientAcked, true
			s.releasedAck = s.clientAcked
		}
		w.prodAccepted(s, now)
	}
}

// markProdData remembers that prod's stream reached end at capture time
// at, for the client's think time.
func (s *session) markProdData(end Seq, at int64) {
	last := &s.prodData[s.prodDataIdx]
	if last.at != 0 && !end.After(last.end) {
		return // a retransmission
	}
	s.prodDataIdx = (s.prodDataIdx + 1) % prodMarks
	s.prodData[s.prodDataIdx] = prodMark{end: end, at: at}
}

// prodDataAt returns when the client had prod's stream up to ack: the
// capture time of prod's segment holding the byte before ack, if it is
// among the ones remembered.
func (s *session) prodDataAt(ack Seq) (int64, bool) {
	found, at := false, int64(0)
	for i := range prodMarks {
		m := &s.prodData[(int(s.prodDataIdx)+prodMarks-i)%prodMarks] // newest first
		if m.at == 0 || m.end.Before(ack) {
			break
		}
		found, at = true, m.at
	}
	return at, found
}

// prodEndBy returns where prod's stream stood at capture time at: the end
// of its latest data segment captured by then, of those remembered, or
// what was released if none is.
func (s *session) prodEndBy(at int64) Seq {
	end, found := s.releasedAck, false
	for i := range prodMarks {
		m := &s.prodData[(int(s.prodDataIdx)+prodMarks-i)%prodMarks] // newest first
		if m.at == 0 {
			break
		}
		if m.at <= at && (!found || m.end.After(end)) {
			end, found = m.end, true
		}
	}
	return end
}

// prodReset handles prod resetting the client's connection. What prod
// acknowledged before still reaches the shadow (scenario 30); the rest is
// dropped, counted, and the shadow's connection reset after it.
func (w *Worker) prodReset(s *session, seq Seq, capAt, now int64) {
	w.pairProdEnded(s, seq, compare.Reset, now)
	if s.state == stateProdOpening {
		// Prod refused the connection, or data of a connection it does
		// not know: nothing of it may reach the shadow.
		w.notAccepted(s)
		return
	}
	w.drain(s, EndProdReset, capAt, now)
}

// notAccepted forgets a session prod never accepted: nothing of it
// reached the shadow (scenario 33).
func (w *Worker) notAccepted(s *session) {
	w.ctr.inc(CtrNotAccepted)
	w.ctr.add(CtrNotAcceptedBytes, s.clientNxt.Sub(s.isn+1))
	w.removeSession(s)
}

// vouched reports whether prod acknowledged the client's stream up to
// end, so the bytes before it may reach the shadow.
func (w *Worker) vouched(s *session, end Seq) bool {
	return w.cfg.TrustInbound || (s.prodAckOK && s.prodAcked.AfterEq(end))
}

// prodAnswered takes a sample of prod's response time on a map: from the
// client's latest data to prod's next data.
func (w *Worker) prodAnswered(s *session, d time.Duration) {
	if d <= 0 {
		return
	}
	w.prodResp[s.key.mapIdx].sample(d)
}

// respTime is a map's smoothed response time, as RFC 6298 smooths RTTs.
type respTime struct {
	avg, dev time.Duration
	n        int
}

func (r *respTime) sample(d time.Duration) {
	if r.n == 0 {
		r.avg, r.dev = d, d/2
	} else {
		diff := r.avg - d
		if diff < 0 {
			diff = -diff
		}
		r.dev = (3*r.dev + diff) / 4
		r.avg = (7*r.avg + d) / 8
	}
	r.n++
}
