package tcpstate

// Timers: each session has one entry in its worker's timer heap, at its
// earliest deadline. When it fires, onTimer runs the handler of every
// deadline that is due (one expiredX per deadline), then reschedule puts
// the session back at its next one.

// reschedule puts the session's next deadline on the timer heap.
func (w *Worker) reschedule(s *session, now int64) {
	if s.heapIdx == heapRemoved {
		return
	}
	next := int64(0)
	at := func(t int64) {
		if t != 0 && (next == 0 || t < next) {
			next = t
		}
	}
	switch {
	case s.state == stateClosed:
		at(s.lingerEnd)
	case s.state == stateShadowGone:
		at(s.lingerEnd)
		at(s.drainUntil)
		if len(s.q()) > 0 {
			at(s.reconnectAt)
		}
	case s.state == stateProdOpening:
		at(s.startAt + int64(w.cfg.HandshakeTimeout))
	case s.state == stateSynSent:
		at(s.startAt + int64(w.cfg.HandshakeTimeout))
		at(s.rtoAt)
		at(s.drainUntil)
	default:
		at(s.lastSeen + int64(w.cfg.IdleTimeout))
		at(s.rtoAt)
		at(s.paceAt)
		at(s.ackAt)
		at(s.drainUntil)
		at(s.vouchBy)
		if s.gapSince != 0 {
			at(s.gapSince + int64(w.cfg.GapTimeout))
		}
	}
	if next != 0 && next <= now {
		next = now + 1 // due already: the next Tick, never this one again
	}
	w.timers.schedule(s, next)
}

// Tick runs the timers due at now.
func (w *Worker) Tick(now int64) {
	for {
		s := w.timers.popDue(now)
		if s == nil {
			return
		}
		w.onTimer(s, now)
	}
}

func (w *Worker) onTimer(s *session, now int64) {
	switch {
	case s.state == stateClosed:
		if now >= s.lingerEnd {
			w.expiredLinger(s)
			return
		}
	case s.state == stateShadowGone:
		switch {
		case now >= s.lingerEnd:
			w.expiredLinger(s)
			return
		case s.drainUntil != 0 && now >= s.drainUntil:
			w.expiredDrain(s, now)
		case len(s.q()) > 0 && now >= s.reconnectAt:
			w.expiredReconnect(s, now)
		}
	case s.state == stateProdOpening:
		if now-s.startAt >= int64(w.cfg.HandshakeTimeout) {
			w.expiredProdHandshake(s)
			return
		}
	case s.state == stateSynSent:
		switch {
		case now-s.startAt >= int64(w.cfg.HandshakeTimeout):
			w.expiredHandshake(s, now)
		case s.drainUntil != 0 && now >= s.drainUntil:
			w.expiredDrain(s, now)
		case s.rtoAt != 0 && now >= s.rtoAt:
			w.expiredSynRetransmit(s, now)
		}
	default:
		switch {
		case now-s.lastSeen >= int64(w.cfg.IdleTimeout):
			w.expiredIdle(s, now)
		case s.drainUntil != 0 && now >= s.drainUntil:
			w.expiredDrain(s, now)
		case s.gapSince != 0 && now-s.gapSince >= int64(w.cfg.GapTimeout):
			w.expiredCaptureGap(s, now)
		case s.rtoAt != 0 && now >= s.rtoAt:
			w.expiredRetransmit(s, now)
		}
		if s.state.connected() && s.paceAt != 0 && now >= s.paceAt {
			w.expiredPace(s)
		}
		if s.state.connected() && s.ackAt != 0 && now >= s.ackAt {
			w.expiredDelayedAck(s)
		}
		if s.state.connected() && s.vouchBy != 0 && now >= s.vouchBy {
			w.expiredVouch(s)
		}
	}
	w.reschedule(s, now)
}

// expiredLinger removes an ended session: late replies have had their
// time (scenario 20).
func (w *Worker) expiredLinger(s *session) { w.removeSession(s) }

// expiredProdHandshake forgets a connection prod never accepted within
// HandshakeTimeout (a spoofed or firewalled SYN, scenario 33): it cost no
// shadow connection.
func (w *Worker) expiredProdHandshake(s *session) { w.notAccepted(s) }

// expiredDrain cuts what prod accepted before the client's FIN or RST
// but the shadow did not take within DrainTimeout (scenario 30).
func (w *Worker) expiredDrain(s *session, now int64) {
	w.ctr.inc(CtrDrainCut)
	if s.state == stateShadowGone {
		w.setState(s, stateClosed)
		w.freeQueue(s)
		s.lingerEnd = min(s.lingerEnd, now+int64(w.cfg.Linger))
		return
	}
	w.endSession(s, EndDrainTimeout, now)
}

// expiredVouch ends the grace for prod's ACKs after a reset: the next
// Flush drops what prod has not acknowledged (scenario 30).
func (w *Worker) expiredVouch(s *session) {
	s.vouchBy = 0
	w.markDirty(s)
}

// expiredReconnect opens the fresh connection a backoff or the reconnect
// rate held back (scenarios 19 and 32).
func (w *Worker) expiredReconnect(s *session, now int64) { w.reconnect(s, now) }

// expiredHandshake gives up a SYN the shadow never answered (scenario 4).
func (w *Worker) expiredHandshake(s *session, now int64) {
	w.endSession(s, EndHandshakeTimeout, now)
}

// expiredSynRetransmit sends the SYN again, backing off.
func (w *Worker) expiredSynRetransmit(s *session, now int64) {
	w.ctr.inc(CtrRetransmits)
	w.send(s.synPkt.Bytes())
	s.rto = min(2*s.rto, w.cfg.RTOMax)
	s.rtoAt = now + int64(s.rto)
}

// expiredIdle ends a session nothing crossed for IdleTimeout (scenario
// 26).
func (w *Worker) expiredIdle(s *session, now int64) { w.endSession(s, EndIdle, now) }

// expiredCaptureGap gives up client data the capture missed (scenario
// 11).
func (w *Worker) expiredCaptureGap(s *session, now int64) {
	w.endSession(s, EndCaptureGap, now)
}

// expiredRetransmit re-sends what the shadow has not acknowledged, with
// exponential backoff, up to MaxRetransmits times (scenario 13).
func (w *Worker) expiredRetransmit(s *session, now int64) {
	s.retries++
	if s.retries > w.cfg.MaxRetransmits {
		w.endSession(s, EndRetransmitLimit, now)
		return
	}
	w.retransmit(s, now)
	s.rto = min(2*s.rto, w.cfg.RTOMax)
	s.rtoAt = now + int64(s.rto)
}

// expiredPace lets the next Flush look at a held request again (scenarios
// 8 and 9).
func (w *Worker) expiredPace(s *session) {
	s.paceAt = 0
	w.markDirty(s)
}

// expiredDelayedAck sends the ACK that waited for a request to ride on.
func (w *Worker) expiredDelayedAck(s *session) {
	s.needAck, s.ackAt = true, 0
	w.markDirty(s)
}
