package tcpstate

import (
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// The captured side: packets the client sent to prod, queued toward the
// shadow in sequence order.

// handleCaptured processes one captured client packet held in pb, which
// the worker now owns; lay is where the engine found its headers. pb is
// freed here unless a session kept it: the one release point of a
// captured packet.
func (w *Worker) handleCaptured(pb *pktBuf, lay rewrite.Layout, capAt int64, r route, now int64) {
	p := lay.View(pb.b)
	if !w.captured(pb, &p, capAt, r, now) {
		pb.free()
	}
}

// captured finds or starts the packet's session and hands the packet to
// it. It reports whether a session kept pb.
func (w *Worker) captured(pb *pktBuf, p *rewrite.Packet, capAt int64, r route, now int64) bool {
	key := sessionKey{client: p.Tuple(), mapIdx: r.mapIdx(), copy: r.copyIdx()}
	flags := p.TCP().Flags()
	s := w.sessions[key]
	if flags&rewrite.FlagSYN != 0 {
		if flags&(rewrite.FlagACK|rewrite.FlagRST|rewrite.FlagFIN) != 0 {
			w.ctr.inc(CtrOddPackets) // scenario 25: not a client's opening
			return false
		}
		return w.clientSYN(s, key, pb, p, capAt, now)
	}
	if s == nil {
		if p.PayloadLen() == 0 || flags&rewrite.FlagRST != 0 {
			if flags&(rewrite.FlagFIN|rewrite.FlagRST) != 0 {
				w.skipped.forget(key) // the connection is over
			}
			w.ctr.inc(CtrIgnoredNoSession) // scenario 5: pure ACK/FIN/RST
			return false
		}
		if s = w.joinMidstream(key, p, capAt, now); s == nil {
			return false
		}
	}
	switch s.state {
	case stateShadowGone:
		// The shadow closed a connection the client keeps using
		// (scenario 19): its data goes on a fresh one. If the client
		// finishes instead, the flow's place need not be kept.
		if flags&(rewrite.FlagFIN|rewrite.FlagRST) != 0 && len(s.q()) == 0 {
			w.setState(s, stateClosed)
			s.lingerEnd = min(s.lingerEnd, now+int64(w.cfg.Linger))
			w.markDirty(s)
			w.ctr.inc(CtrIgnoredNoSession)
			return false
		}
	case stateClosed:
		// A flow given up keeps its place while the client goes on, so
		// that it is not joined again (scenario 32).
		s.lingerEnd = max(s.lingerEnd, now+w.lingerFor(s))
		w.markDirty(s)
		w.ctr.inc(CtrIgnoredNoSession)
		return false
	}
	s.lastSeen = now
	kept := w.clientPacket(s, pb, p, capAt, now)
	if s.heapIdx == heapRemoved {
		return kept // prod never accepted it (33): forgotten
	}
	w.checkAccepted(s, now)
	if s.state == stateShadowGone && len(s.q()) > 0 {
		if s.rejections > 0 && answeredAsProd(s, &s.q()[0]) {
			// The shadow had served the flow in full, and closed for its
			// own reasons (Connection: close): not a rejection.
			s.rejections, s.reconnectAt = 0, 0
		}
		if now >= s.reconnectAt {
			w.reconnect(s, now)
		}
	}
	return kept
}

// clientPacket handles a non-SYN client packet of a live session. It
// reports whether the session kept pb.
func (w *Worker) clientPacket(s *session, pb *pktBuf, p *rewrite.Packet, capAt, now int64) bool {
	tcp := p.TCP()
	flags := tcp.Flags()
	seq, ack := Seq(tcp.Seq()), Seq(tcp.Ack())
	plen := p.PayloadLen()
	var o rewrite.Options
	rewrite.ParseOptions(tcp, &o)
	if o.HasTimestamps() && tsAfter(o.TSVal, s.tsSent) && plen == 0 {
		s.tsSent = o.TSVal // pure ACKs keep our own ACKs' TSval current
	}
	if flags&rewrite.FlagACK != 0 {
		// Scenario 15, the other way: the client's window is what the
		// copier advertises to the shadow. When it opens up again, tell
		// the shadow, or a zero window would never reopen.
		if old := s.clientWnd; tcp.Window() > old && (old == 0 || tcp.Window() >= old+old/2) && s.state == stateEstablished {
			s.needAck = true
		}
		s.clientWnd = tcp.Window()
		w.clientAck(s, ack, now)
	}
	if flags&rewrite.FlagRST != 0 {
		w.drain(s, EndClientReset, capAt, now) // scenarios 18 and 30
		return false
	}
	if flags&rewrite.FlagFIN != 0 && !s.clientFin {
		// Scenario 17: data first; the FIN goes once the shadow has
		// acknowledged everything before it, within DrainTimeout (30).
		s.clientFin, s.finSeq = true, seq.Add(plen)
		s.drainUntil = now + int64(w.cfg.DrainTimeout)
	}
	w.markDirty(s)
	if plen == 0 || s.state.ended() && s.state != stateShadowGone {
		return false
	}
	if flags&rewrite.FlagFIN != 0 {
		p.SetFlags(flags &^ rewrite.FlagFIN)
	}
	return w.enqueue(s, pb, p, &o, capAt, now)
}

// clientAck takes the ACK of a client packet: while prod's handshake is
// under way, the client acknowledging prod's SYN-ACK completes prod's
// acceptance (scenario 33); later, the first ACK sets the pacing's
// baseline when prod's own packets do not.
func (w *Worker) clientAck(s *session, ack Seq, now int64) {
	if s.state == stateProdOpening && s.opener == openedBySYN {
		if !s.clientAckOK {
			s.clientAcked, s.clientAckOK = ack, true
		}
		return // checkAccepted decides
	}
	if !s.baseOK {
		s.prodBase, s.baseOK = ack, true // the handshake ACK: prod's ISN + 1
		s.releasedAck = ack
	}
}

// enqueue rewrites a captured data segment toward the shadow and queues it
// in sequence order, dropping what is already queued (scenario 12) and
// splitting what exceeds the MSS (scenario 24). It reports whether the
// queue kept pb; a trimmed or split segment is queued in new buffers.
func (w *Worker) enqueue(s *session, pb *pktBuf, p *rewrite.Packet, o *rewrite.Options, capAt, now int64) bool {
	tcp := p.TCP()
	g := segment{
		pb: pb, seq: Seq(tcp.Seq()), ack: Seq(tcp.Ack()), capAt: capAt,
	}
	g.end = g.seq.Add(p.PayloadLen())
	lo, hi, at, ok := s.placement(g.seq, g.end)
	if !ok {
		w.ctr.inc(CtrClientDupData)
		return false
	}
	if o.SACK {
		p.ClearOptions(rewrite.OptSACK) // blocks in prod's sequence space
	}
	if s.state == stateEstablished && !s.tsOK && o.HasTimestamps() {
		p.ClearOptions(rewrite.OptTimestamps)
		rewrite.ParseOptions(p.TCP(), o)
	}
	g.pkt, g.opts = *p, *o
	// Bounds first, counting the pieces a split will take, so that they
	// hold exactly (scenarios 27, 34).
	cost := pb.size()
	if lo != g.seq || hi != g.end || g.len() > s.payloadRoom(&g) {
		cost = s.splitCost(&g, lo, hi)
	}
	if !w.fits(s, cost) {
		w.ctr.inc(CtrShedMemory)
		w.endSession(s, EndBufferLimit, now)
		return false
	}
	p.Normalize(copyTTL)
	if !p.Retarget(s.src, s.dst) { // full checksums: captured ones may be partial (offload)
		w.ctr.inc(CtrIgnoredFamily)
		return false
	}
	g.pkt = *p
	if g.seq == s.isn+1 && s.baseOK && g.ack.After(s.prodBase) {
		w.ctr.inc(CtrGreetingWaits) // scenario 10: the client's first data follows a greeting
	}
	if hi.After(s.clientNxt) {
		if w.rec != nil && lo.AfterEq(s.clientNxt) {
			w.pairClient(s, lo, g.ack, p.Payload()[lo.Sub(g.seq):hi.Sub(g.seq)], capAt, now)
		}
		s.clientNxt = hi
		s.prodWaitFrom = capAt // prod's next data answers this
	}
	if lo == g.seq && hi == g.end && g.len() <= s.payloadRoom(&g) {
		s.insertSeg(at, g) // the common case: queued as captured
		w.hold(s, pb)
		return true
	}
	if lo != g.seq || hi != g.end {
		w.ctr.inc(CtrClientTrimmed)
		ng, ok := w.reslice(s, &g, lo, hi)
		if !ok {
			return false
		}
		if !w.queueSeg(s, at, &ng) {
			ng.pb.free()
		}
		return false
	}
	w.insertSplit(s, at, &g)
	return false
}

// fits reports whether cost more bytes of buffers stay within the
// session's and the worker's budgets.
func (w *Worker) fits(s *session, cost int) bool {
	return s.qBytes+cost <= w.cfg.MaxSessionBytes && w.buffered+int64(cost) <= w.budget
}

// splitCost is what bytes [lo, hi) of g cost once queued in MSS-sized
// pieces: the buffers are counted before they are taken.
func (s *session) splitCost(g *segment, lo, hi Seq) int {
	room := max(s.payloadRoom(g), 1)
	hdr := g.pkt.IPHeaderLen() + g.pkt.TCP().HeaderLen()
	n := hi.Sub(lo)
	full, rest := n/room, n%room
	cost := full * bufClassSize(hdr+room)
	if rest > 0 {
		cost += bufClassSize(hdr + rest)
	}
	return cost
}

// queueSeg queues g at index at, split into MSS-sized pieces if it is
// larger. It reports whether the queue kept g's buffer; pieces have their
// own.
func (w *Worker) queueSeg(s *session, at int, g *segment) bool {
	if g.len() > s.payloadRoom(g) {
		w.insertSplit(s, at, g)
		return false
	}
	s.insertSeg(at, *g)
	w.hold(s, g.pb)
	return true
}

// placement finds where [seq, end) goes in the queue: the part not yet
// queued or acknowledged [lo, hi) and the index to insert it at. ok is
// false when nothing of it is new.
func (s *session) placement(seq, end Seq) (lo, hi Seq, at int, ok bool) {
	q := s.q()
	if end.BeforeEq(s.sndUna) {
		return 0, 0, 0, false
	}
	if seq.Before(s.sndUna) {
		seq = s.sndUna
	}
	if seq.AfterEq(s.clientNxt) {
		return seq, end, len(q), true
	}
	if end.After(s.clientNxt) {
		return s.clientNxt, end, len(q), true
	}
	// Inside what was seen: it can only fill a hole left by a capture gap.
	prevEnd := s.sndUna
	for i := range q {
		if q[i].seq.After(prevEnd) && seq.Before(q[i].seq) && end.After(prevEnd) {
			return MaxSeq(seq, prevEnd), minSeq(end, q[i].seq), i, true
		}
		prevEnd = MaxSeq(prevEnd, q[i].end)
	}
	return 0, 0, 0, false
}

func minSeq(a, b Seq) Seq {
	if a.Before(b) {
		return a
	}
	return b
}

// reslice builds a new segment holding bytes [lo, hi) of g, in a buffer of
// its own.
func (w *Worker) reslice(s *session, g *segment, lo, hi Seq) (segment, bool) {
	tcp := g.pkt.TCP()
	off := lo.Sub(g.seq)
	seg := rewrite.Segment{
		Src: s.src, Dst: s.dst, Seq: uint32(lo), Ack: tcp.Ack(),
		Flags:  tcp.Flags() &^ (rewrite.FlagFIN | rewrite.FlagSYN),
		Window: tcp.Window(), Options: tcp.Options(),
		Payload: g.pkt.Payload()[off : off+hi.Sub(lo)],
	}
	pb := getBuf(seg.Len())
	if pb == nil {
		return segment{}, false
	}
	n, err := seg.Put(pb.b)
	if err != nil {
		pb.free()
		return segment{}, false
	}
	pb.b = pb.b[:n]
	ng := segment{pb: pb, seq: lo, end: hi, ack: g.ack, capAt: g.capAt}
	if ng.pkt.Decode(pb.b) != nil {
		pb.free()
		return segment{}, false
	}
	rewrite.ParseOptions(ng.pkt.TCP(), &ng.opts)
	return ng, true
}

// insertSplit queues g's bytes as MSS-sized pieces at index at; g's own
// buffer stays the caller's. The MSS bounds payload plus TCP options (RFC
// 6691), so options come off it. Only the first piece keeps g's request
// boundary.
func (w *Worker) insertSplit(s *session, at int, g *segment) {
	w.ctr.inc(CtrSplit)
	room := max(s.mss-(g.pkt.TCP().HeaderLen()-rewrite.TCPMinHeaderLen), 1)
	for lo := g.seq; lo.Before(g.end); {
		hi := minSeq(lo.Add(room), g.end)
		ng, ok := w.reslice(s, g, lo, hi)
		if !ok {
			break
		}
		s.insertSeg(at, ng)
		w.hold(s, ng.pb)
		at++
		lo = hi
	}
}
