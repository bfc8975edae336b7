package tcpstate

import (
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// The send side, in the order a queued segment meets it at Flush:
//
//  1. trySend walks the queue from the first unsent segment: a hole in the
//     captured data stops it (scenario 11), a request start waits for
//     mayStartRequest (pacing, scenarios 7-10), the shadow's window bounds
//     what is in flight (15).
//  2. sendSeg stamps the segment with the ACK of what the shadow sent and,
//     when negotiated, the timestamps it expects (21), then send hands it
//     to the Sender.
//  3. Once everything before the client's FIN is acknowledged, sendFin
//     sends it (17).
//
// retransmit re-sends from the queue on an RTO or duplicate ACKs (13);
// sendCtl builds the copier's own segments (ACKs, FINs, RSTs).

// trySend sends queued segments as far as order, pacing and the shadow's
// window allow, then the FIN once everything before it is acknowledged.
func (w *Worker) trySend(s *session, now int64) {
	q := s.q()
	for s.nsent < len(q) {
		g := &q[s.nsent]
		if g.seq.After(s.sndNxt) {
			if s.gapSince == 0 {
				s.gapSince = now // scenario 11: wait for the missing bytes
			}
			return
		}
		s.gapSince = 0
		if g.expect > 0 && !w.cfg.NoPacing && !w.mayStartRequest(s, g, now) {
			return
		}
		// Scenario 15: stay inside the shadow's window, but always keep
		// one segment in flight so a zero window gets probed.
		if s.sndNxt != s.sndUna && g.seq.Sub(s.sndUna) >= s.sndWnd {
			return
		}
		if g.expect > 0 {
			// Scenario 8: how much later than on prod, relative to the
			// previous request, this request reaches the shadow.
			if drift := (now - s.reqSentAt) - (g.capAt - s.reqCapAt); drift > 0 {
				w.ctr.add(CtrDriftMicros, int(drift/1000))
			}
			w.ctr.inc(CtrRequests)
			s.reqSentAt, s.reqCapAt, s.respBytes = now, g.capAt, 0
		}
		w.sendSeg(s, g, now)
		s.nsent++
		if g.end.After(s.sndNxt) {
			s.sndNxt = g.end
		}
		if s.rtoAt == 0 {
			s.rtoAt = now + int64(s.rto)
		}
		s.needAck = false
	}
	s.gapSince = 0
	if s.state == stateEstablished && s.clientFin && s.sndNxt == s.finSeq && s.sndUna == s.finSeq {
		w.sendFin(s, now)
		w.setState(s, stateFinWait)
	}
}

// mayStartRequest decides whether the request starting at g may go: the
// shadow has acknowledged the previous one and answered it (scenarios 7-9)
// and prod's think time has passed. Otherwise it sets paceAt.
func (w *Worker) mayStartRequest(s *session, g *segment, now int64) bool {
	if s.sndUna != s.sndNxt {
		return false // an ACK wakes us
	}
	quiet := int64(w.cfg.QuietPeriod)
	answered := s.respBytes >= g.expect || (s.respBytes > 0 && now-s.lastReplyAt >= quiet)
	if !answered {
		if s.respBytes > 0 {
			s.paceAt = s.lastReplyAt + quiet
		} else {
			if s.sndNxt == s.isn+1 && !s.greetWait {
				s.greetWait = true // scenario 10: a server greeting first
				w.ctr.inc(CtrGreetingWaits)
			}
			s.paceAt = s.reqSentAt + int64(w.cfg.ResponseTimeout)
			if now >= s.paceAt {
				w.endSession(s, EndResponseTimeout, now)
			}
		}
		return false
	}
	if think := g.capAt - s.reqCapAt; think > 0 && now < s.reqSentAt+think {
		s.paceAt = s.reqSentAt + think // scenario 8: prod's think time
		return false
	}
	return true
}

func (w *Worker) sendSeg(s *session, g *segment, now int64) {
	p := &g.pkt
	p.SetAck(uint32(s.rcvNxt))
	if s.tsOK && g.opts.HasTimestamps() {
		val := g.opts.TSVal
		if tsAfter(s.tsSent, val) {
			val = s.tsSent // scenario 21: never backwards
		}
		s.tsSent = val
		p.SetTimestamps(&g.opts, val, s.tsRecent)
	}
	if g.sentAt != 0 {
		g.resent = true
		w.ctr.inc(CtrRetransmits)
	}
	g.sentAt = now
	s.ackSent()
	w.send(p.Bytes())
}

// sendFin sends the client's FIN, every byte before it acknowledged.
func (w *Worker) sendFin(s *session, now int64) {
	w.sendCtl(s, rewrite.FlagFIN|rewrite.FlagACK, s.finSeq, s.rcvNxt)
	s.finSent, s.ourFin = true, s.finSeq
	s.sndNxt = s.finSeq + 1
	s.rtoAt = now + int64(s.rto)
	s.needAck = false
}

// retransmit re-sends the first unacknowledged segment, or the FIN.
func (w *Worker) retransmit(s *session, now int64) {
	if q := s.q(); s.nsent > 0 && len(q) > 0 {
		w.sendSeg(s, &q[0], now)
		return
	}
	if s.finSent && s.sndUna == s.ourFin {
		w.ctr.inc(CtrRetransmits)
		w.sendCtl(s, rewrite.FlagFIN|rewrite.FlagACK, s.ourFin, s.rcvNxt)
	}
}

// sendCtl sends a segment without payload built by the copier itself.
func (w *Worker) sendCtl(s *session, flags uint8, seq, ack Seq) {
	var optBuf [12]byte // timestamps, NOP-padded
	opts := optBuf[:0]
	if s.tsOK && flags&rewrite.FlagRST == 0 {
		opts = rewrite.AppendTimestamps(opts, s.tsSent, s.tsRecent)
	}
	wnd := s.clientWnd
	if flags&rewrite.FlagRST != 0 {
		wnd = 0
	}
	seg := rewrite.Segment{
		Src: s.src, Dst: s.dst, Seq: uint32(seq), Ack: uint32(ack),
		Flags: flags, Window: wnd, Options: opts,
	}
	n, err := seg.Put(w.ctl[:])
	if err != nil {
		w.ctr.inc(CtrSendErrors)
		return
	}
	if flags&rewrite.FlagACK != 0 {
		s.ackSent()
	}
	w.send(w.ctl[:n])
}

func (w *Worker) send(b []byte) {
	if err := w.out.Send(b); err != nil {
		w.ctr.inc(CtrSendErrors) // never fatal (scenario 24)
		return
	}
	w.ctr.inc(CtrPacketsSent)
	w.ctr.add(CtrBytesSent, len(b))
}
