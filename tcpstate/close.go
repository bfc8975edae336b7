package tcpstate

import (
	"time"

	"github.com/tcpshadow/tcpshadow/internal/compare"
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
	w.end(s, reason, now)
	w.freeQueue(s)
}

// end moves s to closed, counting reason, unless it ended already; it
// reports whether it did. The queue stays for the caller: shadowEnded
// moves it to a fresh connection.
func (w *Worker) end(s *session, reason EndReason, now int64) bool {
	if s.state.ended() {
		return false
	}
	if s.state != stateProdOpening {
		w.ctr.ended[reason].Add(1) // a session is counted as ended once it started
	}
	w.setState(s, stateClosed)
	w.pairEnded(s) // every round that reached the shadow, compared once prod's side is in
	if s.syn != nil {
		w.release(s, s.syn)
		s.syn = nil
	}
	w.dropFastOpen(s)
	s.rtoAt, s.paceAt, s.gapSince = 0, 0, 0
	s.lingerEnd = now + int64(w.cfg.Linger)
	w.markDirty(s)
	return true
}

// drain ends s for reason once what prod accepted has reached the shadow,
// and the shadow has answered as much as prod had when the reset came (as
// pacing releases a round: the reset is the client's last one), then
// resets the shadow's connection; it is bounded by DrainTimeout (scenario
// 30). What prod never acknowledged is dropped, counted.
func (w *Worker) drain(s *session, reason EndReason, capAt, now int64) {
	if s.state == stateProdOpening {
		w.notAccepted(s)
		return
	}
	switch {
	case s.state == stateClosed:
		return
	case s.state.ended() && !w.cfg.TrustInbound:
		// No connection to deliver on within the grace below: what prod
		// accepted goes on a fresh one only if the client goes on, and
		// it has reset.
		w.dropUnvouched(s)
	}
	switch {
	case s.state == stateClosed:
		return
	case len(s.q()) == 0 && s.state == stateShadowGone:
		w.setState(s, stateClosed) // nothing owed: the flow's place need not be kept
		s.lingerEnd = min(s.lingerEnd, now+int64(w.cfg.Linger))
		w.markDirty(s)
		return
	case len(s.q()) == 0 && (w.cfg.NoPacing || !s.baseOK), s.state == stateFinWait || s.state == stateLastAck:
		// Nothing owed, or nothing to wait for. With the queue empty
		// but pacing on, the shadow may still be working through the
		// last round (pipelined requests sent before the reset): the
		// reset waits for its answer as it would behind queued data.
		w.endSession(s, reason, now)
		return
	}
	s.resetAfter, s.resetReason = true, reason
	s.vouchBy = now + int64(vouchGrace)
	s.resetAt = capAt
	if s.drainUntil == 0 {
		s.drainUntil = now + int64(w.cfg.DrainTimeout)
	}
	w.markDirty(s)
}

// vouchGrace is how long after a reset prod's ACKs may still arrive for
// data the client sent before it: the two directions are captured apart,
// and the reset can overtake them. What prod has not acknowledged by then
// is dropped.
const vouchGrace = 200 * time.Millisecond

// dropUnvouched drops the queued data prod has not acknowledged: it will
// not be, the client or prod having reset.
func (w *Worker) dropUnvouched(s *session) {
	if w.cfg.TrustInbound {
		return
	}
	for q := s.q(); len(q) > s.nsent && !w.vouched(s, q[len(q)-1].end); q = s.q() {
		g := &q[len(q)-1]
		w.ctr.add(CtrNotAcceptedBytes, g.len())
		pb := g.pb
		s.removeSegAt(len(q) - 1)
		w.release(s, pb)
	}
	s.clientNxt = MaxSeq(s.sndNxt, s.sndUna)
	if q := s.q(); len(q) > 0 {
		s.clientNxt = MaxSeq(s.clientNxt, q[len(q)-1].end)
	}
}

// shadowEnded handles the shadow closing or resetting a connection. If the
// client has not finished, what the shadow did not acknowledge, and what
// the client sends next, goes on a fresh connection (scenario 19); after
// shadow rejections, only after a backoff, and not for ever (32).
func (w *Worker) shadowEnded(s *session, reason EndReason, now int64) {
	if reason == EndShadowReset {
		w.pairShadowOutcome(s, compare.Reset, now)
	} else {
		w.pairShadowOutcome(s, compare.Closed, now)
	}
	pending := s.sndUna != s.clientNxt && len(s.q()) > 0
	w.end(s, reason, now)
	if s.clientFin && !pending {
		w.freeQueue(s) // an ordinary close, the shadow's FIN first
		return
	}
	w.setState(s, stateShadowGone)
	s.nsent = 0 // nothing queued is on the wire of a fresh connection
	s.lingerEnd = now + int64(max(w.cfg.Linger, w.cfg.IdleTimeout))
	if w.rejected(s, reason, pending, now) {
		s.rejections++
	} else {
		s.rejections = 0
	}
	s.reconnectAt = now + backoff(s.rejections)
	if pending && now >= s.reconnectAt {
		w.reconnect(s, now)
	}
}

// rejected reports whether the shadow ended s in answer to copied data
// (scenario 32): soon after the copier's last data, by a reset, or by a
// close that acknowledges that data (the shadow read it, then closed)
// unless it had answered as much as prod. A close of an idle connection
// (a shorter keep-alive), or one racing the client's next request (it
// does not acknowledge it), is not.
func (w *Worker) rejected(s *session, reason EndReason, pending bool, now int64) bool {
	window := min(max(w.noAnswerWait(s)/2, int64(rejectWindowMin)), int64(rejectWindowMax))
	if s.lastSendAt == 0 || now-s.lastSendAt > window {
		return false
	}
	if reason == EndShadowReset {
		return true
	}
	if s.sndUna != s.sndNxt {
		// The close does not acknowledge what was sent last: it left
		// before that data came (an idle close racing the client).
		return false
	}
	return !pending || !answeredAsProd(s, &s.q()[0])
}

// rejectWindowMin and rejectWindowMax bound how soon after the copier's
// last data the shadow's close counts as its answer to it.
const (
	rejectWindowMin = 100 * time.Millisecond
	rejectWindowMax = 500 * time.Millisecond
)

// maxReconnects bounds the fresh connections opened after rejections in
// a row for one client flow: a shadow that rejects every copied session
// (a login it cannot accept) ends the flow's copy instead of making the
// copier loop (scenario 32).
const maxReconnects = 3

// reconnectBackoff is the wait before the second fresh connection after
// rejections in a row; it doubles for each one after.
const reconnectBackoff = 100 * time.Millisecond

// backoff is how long to wait before opening a fresh connection after
// rejections of them in a row: none for the first.
func backoff(rejections uint8) int64 {
	if rejections <= 1 {
		return 0
	}
	return int64(reconnectBackoff) << (rejections - 2)
}

// reconnect opens a fresh connection to the shadow for the client flow of
// old, in stateShadowGone, and moves old's queued data to it (scenario
// 19). The new connection uses another forged port: the old tuple may
// still be in TIME_WAIT on the shadow. old ends up closed, lingering; if
// no fresh connection can be opened now (the reconnect rate), it stays as
// it is and tries again later; after maxReconnects rejections in a row
// the flow is given up.
func (w *Worker) reconnect(old *session, now int64) *session {
	q := old.q()
	if old.rejections > maxReconnects {
		w.giveUp(old, now)
		return nil
	}
	if !w.reconnectTokens.take(now, w.cfg.ReconnectRate/float64(w.n)) {
		w.ctr.inc(CtrReconnectsDeferred)
		old.reconnectAt = now + int64(time.Second/10)
		w.markDirty(old)
		return nil
	}
	s := w.newSession(old.key, old.sndUna-1, q[0].capAt, now, rewrite.Tuple{})
	if s == nil {
		old.reconnectAt = now + int64(time.Second/10) // shed: try again later
		w.markDirty(old)
		return nil
	}
	w.setState(old, stateClosed)
	s.rounds, old.rounds = old.rounds, nil // prod's answers come on the flow, not the connection
	if s.rounds != nil {
		s.rounds.starts = compare.Starts{} // the shadow's stream starts over
	}
	s.compareSkipped = old.compareSkipped
	s.rejections = old.rejections
	s.clientNxt, s.clientWnd = old.clientNxt, old.clientWnd
	s.clientFin, s.finSeq, s.drainUntil = old.clientFin, old.finSeq, old.drainUntil
	s.prodAcked, s.prodAckOK, s.prodFin = old.prodAcked, old.prodAckOK, old.prodFin
	s.prodData, s.prodDataIdx = old.prodData, old.prodDataIdx
	s.resetAfter, s.resetReason, s.resetAt, s.vouchBy = old.resetAfter, old.resetReason, old.resetAt, old.vouchBy
	// The first data opens the new connection: nothing to wait for before
	// it, and later rounds count from it.
	s.prodBase, s.baseOK = q[0].ack, true
	s.releasedAck = q[0].ack
	for _, g := range q {
		g.pkt.SetSrc(s.src.Addr(), s.src.Port())
		g.sentAt, g.resent = 0, false
		s.pushSeg(g)
		w.hold(s, g.pb)
	}
	// The buffers now belong to s.
	for len(old.q()) > 0 {
		w.account(old, -old.q()[0].pb.size())
		old.popSeg()
	}
	w.ctr.inc(CtrReconnects)
	if !w.synthesizeSYN(s, openedByReconnect, old.tsOK, old.tsSent, now) {
		return nil
	}
	return s
}

// answeredAsProd reports whether the shadow had answered, on old's
// connection, about as much of prod's stream as the client had before g:
// then the shadow served the flow, and closed for its own reasons (a
// shorter keep-alive). "About": within an eighth, for headers that differ
// (Connection: close).
func answeredAsProd(old *session, g *segment) bool {
	need := old.need(g)
	return need > 0 && old.got() >= need-need/8
}

// giveUp ends the copy of a client flow the shadow keeps rejecting
// (scenario 32): its data is dropped, and the session lingers as long as
// the client goes on, so that the flow is not joined again.
func (w *Worker) giveUp(s *session, now int64) {
	w.setState(s, stateClosed)
	w.freeQueue(s)
	s.givenUp = true
	s.lingerEnd = now + w.lingerFor(s)
	w.ctr.inc(CtrShadowRejected)
	mc := &w.mapCtr[s.key.mapIdx]
	if n := mc.shadowRejected.Add(1); n == 1 {
		w.sh.hintRejections(s.key.mapIdx, &w.cfg.Maps[s.key.mapIdx])
	}
	w.markDirty(s)
}

// lingerFor is how long an ended session outlives its client's last
// packet: a flow given up, as long as a keep-alive may be idle.
func (w *Worker) lingerFor(s *session) int64 {
	if s.givenUp {
		return int64(w.cfg.IdleTimeout)
	}
	return int64(w.cfg.Linger)
}

// freeQueue releases every queued segment.
func (w *Worker) freeQueue(s *session) {
	for len(s.q()) > 0 {
		w.release(s, s.popSeg())
	}
	s.qbuf, s.qhead, s.nsent = nil, 0, 0
}

// removeSession forgets a session, deregistering its flow if it was
// registered, and releases whatever buffers it still holds.
func (w *Worker) removeSession(s *session) {
	w.pairEnd(s)
	w.h2End(s)
	w.freeQueue(s)
	if s.syn != nil {
		w.release(s, s.syn)
		s.syn = nil
	}
	w.dropFastOpen(s)
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
	if s.registered {
		w.reg.Deregister(s.forged)
		s.registered = false
	}
}
