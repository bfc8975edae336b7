package tcpstate

import (
	"time"

	"github.com/tcpshadow/tcpshadow/rewrite"
)

// The send side, in the order a queued segment meets it at Flush:
//
//  1. trySend walks the queue from the first unsent segment: a hole in the
//     captured data stops it (scenario 11), so does data prod has not
//     acknowledged (33); a new round waits for mayRelease (pacing,
//     scenarios 7-10, 28-29); the shadow's window bounds what is in
//     flight (15).
//  2. sendSeg stamps the segment with the ACK of what the shadow sent and,
//     when negotiated, the timestamps it expects (21), then send hands it
//     to the Sender.
//  3. Once everything before the client's FIN is acknowledged, sendFin
//     sends it (17).
//
// retransmit re-sends from the queue on an RTO or duplicate ACKs (13);
// sendCtl builds the copier's own segments (ACKs, FINs, RSTs).

// trySend sends queued segments as far as order, prod's acceptance,
// pacing and the shadow's window allow; then the FIN once everything
// before it is acknowledged, or the RST that ends a drain.
func (w *Worker) trySend(s *session, now int64) {
	if s.resetAfter && s.vouchBy == 0 {
		w.dropUnvouched(s) // the grace for prod's late ACKs after a reset is over
	}
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
		if !w.vouched(s, g.end) {
			return // prod has not acknowledged it yet (scenario 33): its ACK wakes us
		}
		round := s.baseOK && g.ack.After(s.releasedAck)
		if round && !w.cfg.NoPacing && !w.mayRelease(s, g, now) {
			return
		}
		// Scenario 15: stay inside the shadow's window, but always keep
		// one segment in flight so a zero window gets probed.
		if s.sndNxt != s.sndUna && g.seq.Sub(s.sndUna) >= s.sndWnd {
			return
		}
		if round {
			// Scenario 8: how much later than on prod, relative to the
			// previous round, this one reaches the shadow.
			if drift := (now - s.reqSentAt) - (g.capAt - s.reqCapAt); drift > 0 {
				w.ctr.add(CtrDriftMicros, int(drift/1000))
			}
			w.ctr.inc(CtrRequests)
			s.reqSentAt, s.reqCapAt, s.releasedAck, s.releasedRcv = now, g.capAt, g.ack, s.rcvNxt
		}
		w.sendSeg(s, g, now)
		if s.rounds != nil {
			w.pairSent(s, g.ack, now)
		}
		if s.h2 != nil {
			w.h2Sent(s, g.end, now)
		}
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
	switch {
	case s.resetAfter && len(s.q()) == 0 && s.vouchBy == 0:
		// Drained: the reset is the client's last round, paced as one:
		// the shadow may answer as much as prod had when the reset came
		// (prod's answers are captured apart, hence after the grace).
		last := segment{ack: s.prodEndBy(s.resetAt + int64(vouchGrace)), capAt: s.resetAt}
		if w.cfg.NoPacing || !last.ack.After(s.releasedAck) || w.lastRoundDone(s, &last, now) {
			w.endSession(s, s.resetReason, now) // scenario 30
		}
	case s.state == stateEstablished && s.clientFin && s.sndNxt == s.finSeq && s.sndUna == s.finSeq &&
		w.vouched(s, s.finSeq+1):
		w.sendFin(s, now)
		w.setState(s, stateFinWait)
	}
}

// Pacing (scenarios 7-10, 28, 29, 35). Client data carries in its ACK
// how much of prod's stream the client had when it sent it: need bytes
// past the base. It may reach the shadow once the shadow has sent as much
// of its own stream: got bytes past its base. Counting cumulatively this
// way, a longer answer in one round is credited to the next, and client
// bytes that prod never answered (HTTP/2 control frames, pipelined
// requests, uploads) wait for nothing; data with an ACK no later than
// what was released before goes with it. When the shadow is quiet with
// less than prod sent, or sends nothing for longer than prod's answers
// take, the pacing goes on from there: both bases move to now, and the
// shortfall is counted.

// need is how much of prod's stream the client had received before g.
func (s *session) need(g *segment) int {
	if !s.baseOK || !g.ack.After(s.prodBase) {
		return 0
	}
	return g.ack.Sub(s.prodBase)
}

// got is how much of its stream the shadow has sent past its base.
func (s *session) got() int {
	if !s.rcvNxt.After(s.shadowBase) {
		return 0
	}
	return s.rcvNxt.Sub(s.shadowBase)
}

// rebase makes g's round the new origin of both counts: the shadow's
// answers so far are taken as the answers to everything before g.
func (s *session) rebase(g *segment) {
	s.prodBase, s.shadowBase, s.baseOK = g.ack, s.rcvNxt, true
}

// mayRelease decides whether g, the first segment of a new round, may
// go. Otherwise it sets paceAt, or waits for the shadow's next packet.
func (w *Worker) mayRelease(s *session, g *segment, now int64) bool {
	need, got := s.need(g), s.got()
	quiet := int64(w.cfg.QuietPeriod)
	switch {
	case got >= need:
		// Answered. Keep the client's think time (scenario 8).
		if at := w.thinkUntil(s, g); now < at {
			s.paceAt = at
			return false
		}
		if need > 0 {
			s.rejections = 0 // the shadow answers this flow as prod did (32)
		}
		if now-s.lastReplyAt >= quiet {
			s.rebase(g) // the shadow is done: no credit carried further
		}
		return true
	case s.sndUna != s.sndNxt:
		return false // what was sent is not acknowledged: the shadow's ACK wakes us
	case s.rcvNxt.After(s.releasedRcv):
		// The shadow answered, less than prod did: complete once it has
		// been quiet for QuietPeriod (scenario 8), or, should it never be
		// (a stream it pushes, 35), once the round has waited as long as
		// for no answer.
		if at := min(s.lastReplyAt+quiet, s.reqSentAt+w.noAnswerWait(s)); now < at {
			s.paceAt = at
			return false
		}
		w.ctr.inc(CtrPacingShort)
	default:
		// No answer at all since the previous round: wait as long as
		// prod's answers take, with a margin, then go on (scenario 9).
		if at := s.reqSentAt + w.noAnswerWait(s); now < at {
			s.paceAt = at
			return false
		}
		w.ctr.inc(CtrPacingNoAnswer)
	}
	s.rebase(g)
	return true
}

// lastRoundDone decides whether the round a reset ends has been answered:
// the shadow sent as much as prod had, or has been silent for as long as
// a round waits for no answer. Unlike mayRelease it takes no quiet period
// for a complete answer: nothing follows the reset to be held back, and a
// shadow still working through pipelined requests pauses between them.
func (w *Worker) lastRoundDone(s *session, g *segment, now int64) bool {
	need, got := s.need(g), s.got()
	if got >= need {
		return true
	}
	if at := max(s.reqSentAt, s.lastReplyAt) + w.noAnswerWait(s); now < at {
		s.paceAt = at
		return false
	}
	if s.rcvNxt.After(s.releasedRcv) {
		w.ctr.inc(CtrPacingShort)
	} else {
		w.ctr.inc(CtrPacingNoAnswer)
	}
	return true
}

// thinkUntil is when g may follow the shadow's answer, keeping the time
// the client took between having prod's answer and sending g. Without
// prod's packets (TrustInbound) it keeps prod's spacing of rounds instead.
func (w *Worker) thinkUntil(s *session, g *segment) int64 {
	if at, ok := s.prodDataAt(g.ack); ok {
		if think := g.capAt - at; think > 0 {
			return max(s.lastReplyAt, s.reqSentAt) + think
		}
		return 0
	}
	if think := g.capAt - s.reqCapAt; think > 0 {
		return s.reqSentAt + think
	}
	return 0
}

// noAnswerMin bounds from below how long a round waits for an answer the
// shadow does not give: shorter than a scheduler's hiccup is noise.
const noAnswerMin = 250 * time.Millisecond

// noAnswerWait is how long a round waits for any answer: eight times
// prod's smoothed response time on the map (with its deviation), within
// noAnswerMin and ResponseTimeout; ResponseTimeout until prod's answers
// have been seen.
func (w *Worker) noAnswerWait(s *session) int64 {
	r := &w.prodResp[s.key.mapIdx]
	if r.n == 0 {
		return int64(w.cfg.ResponseTimeout)
	}
	return int64(min(max(8*(r.avg+2*r.dev), noAnswerMin), w.cfg.ResponseTimeout))
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
	g.sentAt, s.lastSendAt = now, now
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
	s.drainUntil = 0 // the close is under way
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
	w.ctr.add(CtrBytesSent, len(b))
	if w.flusher != nil {
		w.queued++ // counted as sent once Flush says how many the kernel took
		return
	}
	w.ctr.inc(CtrPacketsSent)
}
