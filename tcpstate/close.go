package tcpstate

import (
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// Ending: every session ends in exactly one counted reason. An abnormal
// end resets the shadow's connection so it frees its state (scenario 20);
// the shadow ending first while the client goes on leads to a fresh
// connection (19). Ended sessions linger to answer late replies, then
// are removed and their flows deregistered.

// setState moves s to st, keeping the per-state gauges.
func (w *Worker) setState(s *session, st state) {
	if s.state == st {
		return
	}
	if s.state != 0 {
		w.ctr.states[s.state].Add(-1)
	}
	s.state = st
	w.ctr.states[st].Add(1)
}

// endSession ends a session abnormally: an RST frees the shadow's state
// (scenario 20), then the session lingers.
func (w *Worker) endSession(s *session, reason EndReason, now int64) {
	switch {
	case s.state == stateSynSent:
		w.sendCtl(s, rewrite.FlagRST, s.isn+1, 0)
	case s.state.connected():
		w.sendCtl(s, rewrite.FlagRST|rewrite.FlagACK, s.sndNxt, s.rcvNxt)
	}
	w.closeSession(s, reason, now)
}

// closeSession ends s for reason: its buffers are released at once
// (scenario 27) and it lingers to absorb late replies.
func (w *Worker) closeSession(s *session, reason EndReason, now int64) {
	if w.end(s, reason, now) {
		w.freeQueue(s)
	}
}

// end moves s to closed, counting reason, unless it ended already; it
// reports whether it did. The queue stays for the caller: shadowEnded
// moves it to a fresh connection.
func (w *Worker) end(s *session, reason EndReason, now int64) bool {
	if s.state.ended() {
		return false
	}
	w.setState(s, stateClosed)
	w.ctr.ended[reason].Add(1)
	if s.syn != nil {
		w.release(s, s.syn)
		s.syn = nil
	}
	s.rtoAt, s.paceAt, s.gapSince = 0, 0, 0
	s.lingerEnd = now + int64(w.cfg.Linger)
	w.markDirty(s)
	return true
}

// shadowEnded handles the shadow closing or resetting a connection. If the
// client has not finished, its remaining data goes on a fresh connection at
// once, or when it next sends (scenario 19).
func (w *Worker) shadowEnded(s *session, reason EndReason, now int64) {
	// Client data the shadow has not acknowledged, sent or not: it goes
	// again on a fresh connection, the client's FIN (if any) after it.
	pending := s.sndUna != s.clientNxt && len(s.q()) > 0
	w.end(s, reason, now)
	switch {
	case pending:
		w.reconnect(s, s.q()[0].capAt, now)
	case !s.clientFin:
		// Keep the flow's place while the client may still use its
		// connection to prod: its next data opens a fresh one.
		w.setState(s, stateShadowGone)
		s.lingerEnd = now + int64(max(w.cfg.Linger, w.cfg.IdleTimeout))
	}
	w.freeQueue(s)
}

// maxReconnects bounds fresh shadow connections for one client flow in a
// row without the shadow acknowledging anything, so a shadow that resets
// every request cannot make the copier loop.
const maxReconnects = 3

// reconnect opens a fresh connection to the shadow for the client flow of
// old, which the shadow closed or reset while the client kept going, and
// moves old's unacknowledged and unsent data to it (scenario 19). The new
// connection uses another forged port: the old tuple may still be in
// TIME_WAIT on the shadow. old ends up closed, lingering; if no fresh
// connection can be opened, it stays as it is.
//
// capAt is the capture time of the data that opens it: the baseline for
// prod's think time on the new connection.
func (w *Worker) reconnect(old *session, capAt, now int64) *session {
	if old.reconnects >= maxReconnects {
		return nil
	}
	s := w.newSession(old.key, old.sndUna-1, capAt, now, rewrite.Tuple{})
	if s == nil {
		return nil
	}
	w.setState(old, stateClosed)
	s.reconnects = old.reconnects + 1
	s.prodAck, s.prodAckOK = old.prodAck, old.prodAckOK
	s.clientNxt, s.clientWnd = old.clientNxt, old.clientWnd
	s.clientFin, s.finSeq = old.clientFin, old.finSeq
	first := true
	for _, g := range old.q() {
		if g.end.BeforeEq(old.sndUna) {
			continue
		}
		g.pkt.SetSrc(s.src.Addr(), s.src.Port())
		g.sentAt, g.resent = 0, false
		if first {
			g.expect, first = 0, false // opens the new connection: nothing to wait for
		}
		s.pushSeg(g)
		w.hold(s, g.pb)
	}
	// The buffers now belong to s.
	for len(old.q()) > 0 {
		w.account(old, -old.q()[0].pb.size())
		old.popSeg()
	}
	if first {
		// Nothing moved: the client's next data opens the connection
		// and sets the baseline of the request boundaries.
		s.prodAckOK = false
	}
	w.ctr.inc(CtrReconnects)
	if !w.synthesizeSYN(s, openedByReconnect, old.tsOK, old.tsSent, now) {
		return nil
	}
	return s
}

// freeQueue releases every queued segment.
func (w *Worker) freeQueue(s *session) {
	for len(s.q()) > 0 {
		w.release(s, s.popSeg())
	}
	s.qbuf, s.qhead, s.nsent = nil, 0, 0
}

// removeSession forgets a session; deregister tells the agent too.
func (w *Worker) removeSession(s *session, deregister bool) {
	w.timers.remove(s)
	s.heapIdx = heapRemoved
	if w.sessions[s.key] == s {
		delete(w.sessions, s.key)
	}
	if w.byForged[s.forged] == s {
		delete(w.byForged, s.forged)
	}
	w.ctr.states[s.state].Add(-1)
	w.ctr.active.Add(-1)
	if deregister {
		w.reg.Deregister(s.forged)
	}
}
