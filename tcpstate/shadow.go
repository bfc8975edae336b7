package tcpstate

import (
	"time"

	"github.com/tcpshadow/tcpshadow/internal/compare"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// The reply side: headers of the shadow's packets, relayed by the agent.
// They drive the handshake, acknowledge queued client data, open the
// window, and carry the shadow's data and FIN, which the copier
// acknowledges as the client's stack would.

// dupAckThreshold is the number of duplicate ACKs that signal a lost
// segment (RFC 5681 §3.2).
const dupAckThreshold = 3

// handleReply processes one relayed reply header from the shadow, laid out
// as lay found it.
func (w *Worker) handleReply(hdr []byte, lay rewrite.Layout, now int64) {
	p := lay.View(hdr)
	s := w.byForged[p.Tuple().Reverse()]
	if s == nil {
		w.ctr.inc(CtrRepliesNoSession)
		return
	}
	w.ctr.inc(CtrReplies)
	s.lastSeen = now
	switch {
	case s.state == stateSynSent:
		w.shadowSynSent(s, &p, now)
	case s.state.connected():
		w.shadowConnected(s, &p, now)
	default:
		w.shadowAfterEnd(s, &p, now)
	}
}

// lateRSTGap is how often one session may answer stray replies with an
// RST: a hostile or confused agent relaying them in a loop makes the
// copier send at most 20 RSTs a second per session, as Linux limits its
// challenge ACKs (RFC 5961 §7).
const lateRSTGap = 50 * time.Millisecond

// mayReset reports whether s may send an RST answering a stray reply now.
func (w *Worker) mayReset(s *session, now int64) bool {
	if s.rstAt != 0 && now-s.rstAt < int64(lateRSTGap) {
		w.ctr.inc(CtrRSTsLimited)
		return false
	}
	s.rstAt = now
	return true
}

// shadowSynSent expects the SYN-ACK answering our SYN.
func (w *Worker) shadowSynSent(s *session, p *rewrite.Packet, now int64) {
	tcp := p.TCP()
	flags := tcp.Flags()
	ack := Seq(tcp.Ack())
	hasACK := flags&rewrite.FlagACK != 0
	switch {
	case flags&(rewrite.FlagSYN|rewrite.FlagACK|rewrite.FlagRST) == rewrite.FlagSYN|rewrite.FlagACK && ack == s.isn+1:
		var o rewrite.Options
		rewrite.ParseOptions(tcp, &o)
		w.establish(s, p, &o, now)
	case flags&rewrite.FlagRST != 0:
		if hasACK && ack == s.isn+1 {
			w.closeSession(s, EndShadowReset, now) // nothing listens there
		}
	default:
		// Scenario 6: a reply of an earlier incarnation of this tuple.
		// Reset it and open again.
		w.ctr.inc(CtrRepliesStale)
		if !w.mayReset(s, now) {
			return
		}
		if hasACK {
			w.sendCtl(s, rewrite.FlagRST, ack, 0)
		}
		w.send(s.synPkt.Bytes())
	}
}

// shadowAfterEnd answers a late reply: the shadow still holds state for
// a session that ended (scenario 20).
func (w *Worker) shadowAfterEnd(s *session, p *rewrite.Packet, now int64) {
	tcp := p.TCP()
	flags := tcp.Flags()
	ack := Seq(tcp.Ack())
	if s.finSent && ack == s.ourFin+1 && p.PayloadLen() == 0 && flags&(rewrite.FlagFIN|rewrite.FlagRST) == 0 {
		return // the shadow acknowledging our FIN: the close completing
	}
	if flags&rewrite.FlagRST == 0 && flags&rewrite.FlagACK != 0 && w.mayReset(s, now) {
		w.sendCtl(s, rewrite.FlagRST, ack, 0)
		w.ctr.inc(CtrLateReplyRST)
	}
}

// shadowConnected handles a reply on an established connection, closing
// or not.
func (w *Worker) shadowConnected(s *session, p *rewrite.Packet, now int64) {
	tcp := p.TCP()
	flags := tcp.Flags()
	if flags&rewrite.FlagRST != 0 {
		w.shadowEnded(s, EndShadowReset, now)
		return
	}
	if flags&rewrite.FlagSYN != 0 {
		// The shadow repeats its SYN-ACK: our ACK was lost (scenario 16).
		s.needAck = true
		w.ctr.inc(CtrShadowDupData)
		w.markDirty(s)
		return
	}
	var o rewrite.Options
	rewrite.ParseOptions(tcp, &o)
	if s.tsOK && o.HasTimestamps() && tsAfter(o.TSVal, s.tsRecent) {
		s.tsRecent = o.TSVal
	}
	seq, plen, fin := Seq(tcp.Seq()), p.PayloadLen(), flags&rewrite.FlagFIN != 0
	if flags&rewrite.FlagACK != 0 {
		w.onAck(s, Seq(tcp.Ack()), int(tcp.Window())<<s.sndWS, plen == 0 && !fin, now)
		if s.state == stateLastAck && s.sndUna == s.ourFin+1 {
			w.closeSession(s, EndClosed, now) // RFC 9293 §3.10.7.4, LAST-ACK
			return
		}
	}
	switch {
	case plen > 0 || fin:
		if s.rounds != nil && seq == s.rcvNxt {
			w.pairShadow(s, p.Payload(), plen, now) // the relayed prefix of new data
		}
		if s.h2 != nil {
			w.h2Shadow(s, p.Payload(), now) // its H2 records: the agent walked its bytes once
		}
		if !w.shadowData(s, seq, plen, fin, now) {
			return
		}
	case seq.Before(s.rcvNxt):
		// A segment below what we acknowledged: the shadow's zero-window
		// or keep-alive probe. RFC 9293 §3.10.7.4: answer with an ACK.
		s.needAck = true
	}
	w.markDirty(s)
}

// establish completes the handshake on the shadow's SYN-ACK.
func (w *Worker) establish(s *session, p *rewrite.Packet, o *rewrite.Options, now int64) {
	tcp := p.TCP()
	w.setState(s, stateEstablished)
	s.rcvNxt = Seq(tcp.Seq()) + 1
	// RFC 7323 §2.2: the SYN-ACK's window is never scaled; scaling holds
	// only if both sides offered it.
	s.sndWnd = int(tcp.Window())
	if s.synOpts.HasWindowScale() && o.HasWindowScale() {
		s.sndWS = min(o.WindowScale, rewrite.MaxWindowScale)
	}
	s.tsOK = s.synOpts.HasTimestamps() && o.HasTimestamps()
	s.tsRecent = o.TSVal
	// RFC 9293 §3.7.1: no option, the default. A smaller MSS than the
	// family's default is floored: it would only multiply packets and
	// buffers (scenario 34).
	floor := rewrite.DefaultMSS4
	if !s.src.Addr().Is4() {
		floor = rewrite.DefaultMSS6
	}
	mss := floor
	if o.HasMSS() {
		mss = max(int(o.MSS), floor)
	}
	s.mss = min(w.cfg.MSS, mss)
	rtt := time.Duration(now - s.synSentAt)
	s.srtt, s.rttvar = rtt, rtt/2
	s.rto = w.clampRTO(s.srtt + 4*s.rttvar)
	s.rtoAt, s.retries = 0, 0
	w.release(s, s.syn)
	s.syn = nil
	s.shadowBase, s.releasedRcv = s.rcvNxt, s.rcvNxt
	s.reqSentAt, s.reqCapAt = s.synSentAt, s.synCapAt
	w.sendCtl(s, rewrite.FlagACK, s.sndNxt, s.rcvNxt) // third packet of the handshake
	if !w.queueFastOpen(s) || !w.normalizeQueue(s) {
		w.ctr.inc(CtrShedMemory)
		w.endSession(s, EndBufferLimit, now)
		return
	}
	w.markDirty(s)
}

// normalizeQueue adapts data queued during the handshake to what the
// shadow negotiated: no timestamps if it refused them, MSS-sized pieces.
// The pieces are counted against the budgets before they are taken; it
// reports false, changing nothing, if they do not fit (scenario 34).
func (w *Worker) normalizeQueue(s *session) bool {
	extra := 0
	for i := range s.q() {
		if g := &s.q()[i]; g.len() > s.payloadRoom(g) {
			extra += s.splitCost(g, g.seq, g.end) - g.pb.size()
		}
	}
	if extra > 0 && !w.fits(s, extra) {
		return false
	}
	for i := 0; i < len(s.q()); i++ {
		g := &s.q()[i]
		if !s.tsOK && g.opts.HasTimestamps() {
			g.pkt.ClearOptions(rewrite.OptTimestamps)
			rewrite.ParseOptions(g.pkt.TCP(), &g.opts)
		}
		if g.len() > s.payloadRoom(g) {
			old := *g
			s.removeSegAt(i)
			before := len(s.q())
			w.insertSplit(s, i, &old)
			w.release(s, old.pb)
			i += len(s.q()) - before - 1
		}
	}
	return true
}

func (w *Worker) clampRTO(d time.Duration) time.Duration {
	return min(max(d, w.cfg.RTOMin), w.cfg.RTOMax)
}

// onAck processes the shadow's acknowledgement and window.
func (w *Worker) onAck(s *session, ack Seq, wnd int, pure bool, now int64) {
	if ack.After(s.sndNxt) {
		// Scenario 14: the shadow holds more than we sent (a joined
		// session's guess, or data of a previous run): take its word.
		for len(s.q()) > 0 && s.q()[0].end.BeforeEq(ack) {
			w.release(s, s.popSeg())
		}
		s.sndNxt = ack
		if s.clientNxt.Before(ack) {
			s.clientNxt = ack
		}
	}
	switch {
	case ack.After(s.sndUna):
		for len(s.q()) > 0 && s.q()[0].end.BeforeEq(ack) {
			g := &s.q()[0]
			if g.sentAt != 0 && !g.resent && g.end == ack {
				w.rttSample(s, time.Duration(now-g.sentAt))
			}
			w.release(s, s.popSeg())
		}
		s.sndUna = ack
		s.retries, s.dupAcks = 0, 0
		if s.drainUntil != 0 {
			s.drainUntil = now + int64(w.cfg.DrainTimeout) // a drain is cut when it stops moving, not when it is slow
		}
		if s.sndUna == s.sndNxt {
			s.rtoAt = 0
		} else {
			s.rtoAt = now + int64(s.rto)
		}
	case ack == s.sndUna && s.sndUna != s.sndNxt && pure && wnd == s.sndWnd:
		// Scenario 13: duplicate ACKs mean a lost segment.
		s.dupAcks++
		if s.dupAcks == dupAckThreshold {
			w.ctr.inc(CtrFastRetransmits)
			w.retransmit(s, now)
		}
	}
	s.sndWnd = wnd
}

// rttSample updates the RTO estimate (RFC 6298 §2).
func (w *Worker) rttSample(s *session, r time.Duration) {
	d := s.srtt - r
	if d < 0 {
		d = -d
	}
	s.rttvar = (3*s.rttvar + d) / 4
	s.srtt = (7*s.srtt + r) / 8
	s.rto = w.clampRTO(s.srtt + 4*s.rttvar)
}

// shadowData takes plen bytes of the shadow's data at seq, and its FIN:
// they are acknowledged as a client's stack would, and move the count of
// the shadow's stream the pacing compares with prod's. It reports whether the session is still
// connected.
func (w *Worker) shadowData(s *session, seq Seq, plen int, fin bool, now int64) bool {
	end := seq.Add(plen)
	if fin {
		end++
	}
	if !end.After(s.rcvNxt) {
		w.ctr.inc(CtrShadowDupData) // scenario 16: re-ACK
		s.needAck = true
		return true
	}
	// A gap in what the agent relayed is skipped: the shadow did send
	// it, so acknowledging it is true to the shadow.
	n := plen
	if seq.BeforeEq(s.rcvNxt) {
		n = min(plen, end.Sub(s.rcvNxt))
	}
	if plen > 0 {
		s.lastReplyAt = now
	}
	// Delayed ACK, as a real client's stack does (RFC 1122 §4.2.3.2, RFC
	// 5681 §4.2): at once for a gap skipped, a FIN or every second full
	// segment; otherwise within AckDelay, usually riding on the next
	// request.
	s.unacked += n
	if seq.After(s.rcvNxt) || fin || s.unacked >= 2*s.mss {
		s.needAck = true
	} else if s.ackAt == 0 {
		s.ackAt = now + int64(w.cfg.AckDelay)
	}
	s.rcvNxt = end
	if fin {
		return w.shadowFin(s, now)
	}
	return true
}

// shadowFin handles the shadow's FIN, just received. It reports whether
// the session is still connected.
func (w *Worker) shadowFin(s *session, now int64) bool {
	switch s.state {
	case stateEstablished:
		if s.clientFin && s.sndUna == s.finSeq && s.sndNxt == s.finSeq {
			// The client finished too and the shadow has all its data:
			// an ordinary close, the shadow's FIN first.
			w.pairShadowOutcome(s, compare.Closed, now)
			w.sendFin(s, now)
			w.setState(s, stateLastAck)
			return true
		}
		// The shadow closes first while the client goes on (its
		// keep-alive is shorter than prod's) or still has data queued:
		// finish this connection, move what is left to a fresh one
		// (scenario 19).
		w.sendCtl(s, rewrite.FlagFIN|rewrite.FlagACK, s.sndNxt, s.rcvNxt)
		s.finSent, s.ourFin = true, s.sndNxt
		w.shadowEnded(s, EndShadowClosed, now)
		return false
	case stateFinWait:
		// The client's last round is answered with a close, as prod's
		// FIN answers it on prod's side (a goodbye such as Terminate).
		w.pairShadowOutcome(s, compare.Closed, now)
		w.sendCtl(s, rewrite.FlagACK, s.sndNxt, s.rcvNxt)
		if s.sndUna == s.ourFin+1 {
			w.closeSession(s, EndClosed, now) // both FINs acknowledged
			return false
		}
		w.setState(s, stateLastAck)
	}
	return true
}
