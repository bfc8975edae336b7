package tcpstate

import (
	"net/netip"
	"time"

	"github.com/tcpshadow/tcpshadow/rewrite"
)

// Admission: how a session starts. A captured SYN opens one (scenarios
// 1-3), data of a flow never seen joins it mid-stream (5), and a budget
// past its half sheds new flows by hash (27). Every new session registers
// its forged flow with the agent before its SYN leaves.

// initialRTO is the retransmission timeout before any RTT sample (RFC
// 6298 §2.1).
const initialRTO = time.Second

// joinWindowScale is the window scale a synthetic SYN offers: the client's
// own is unknown, and 7 is Linux's usual.
const joinWindowScale = 7

// clientSYN handles a captured SYN: a new session, a retransmission
// (scenario 2) or port reuse with a new ISN (scenario 3). The session
// waits for prod to accept the connection before anything reaches the
// shadow (33). It reports whether a session kept pb.
func (w *Worker) clientSYN(s *session, key sessionKey, pb *pktBuf, p *rewrite.Packet, capAt, now int64) bool {
	isn := Seq(p.TCP().Seq())
	var reuse rewrite.Tuple
	reuseRegistered := false
	if s != nil {
		switch {
		case s.isn == isn && s.opener == openedBySYN:
			w.ctr.inc(CtrSynRetransmit)
			return false
		case s.state == stateProdOpening:
			// The old attempt never reached the shadow: forget it.
			w.removeSession(s)
		case !s.state.ended() && s.sndUna != s.clientNxt:
			// Scenario 3 while the copy of the old connection is still
			// under way (the shadow lags prod): let it finish on its own
			// forged tuple; the new connection gets another.
			delete(w.sessions, key)
			w.ctr.inc(CtrPortReuseLagging)
		default:
			reuse, reuseRegistered = s.forged, s.registered
			if !s.state.ended() {
				w.endSession(s, EndPortReuse, now)
			}
			s.registered = false // the new session takes the registration over
			w.removeSession(s)
		}
	}
	if !w.selectOpen(key, isn, false, now) {
		if reuseRegistered {
			w.reg.Deregister(reuse)
		}
		return false
	}
	s = w.newSession(key, isn, capAt, now, reuse)
	if s == nil {
		if reuseRegistered {
			w.reg.Deregister(reuse)
		}
		return false
	}
	if reuseRegistered {
		if s.forged == reuse {
			s.registered = true
		} else {
			w.reg.Deregister(reuse)
		}
	}
	var o rewrite.Options
	rewrite.ParseOptions(p.TCP(), &o)
	// No SACK blocks are ever produced, so SACK must not be offered
	// (scenario 23); nor a fast-open cookie, prod's and not the shadow's.
	if o.SACKPermitted {
		p.ClearOptions(rewrite.OptSACKPermitted)
		o.SACKPermitted = false
	}
	p.ClearOptions(rewrite.OptFastOpen)
	p.Normalize(copyTTL)
	if p.PayloadLen() > 0 {
		// TCP Fast Open: the SYN carries the client's first data. The
		// shadow gets a plain SYN, and the data after the handshake
		// (queueFastOpen), as a client without a cookie sends it.
		w.ctr.inc(CtrFastOpenSYNs)
		if pb = w.splitFastOpen(s, pb, p); pb == nil {
			w.removeSession(s)
			return true // pb was freed
		}
	}
	if !p.Retarget(s.src, s.dst) {
		w.ctr.inc(CtrIgnoredFamily) // a pool of the other family
		w.removeSession(s)
		return false
	}
	s.syn, s.synPkt, s.synOpts = pb, *p, o
	s.tsSent = o.TSVal
	s.clientWnd = p.TCP().Window()
	w.hold(s, pb)
	if w.cfg.TrustInbound {
		w.openShadow(s, now)
	} else {
		w.applyEarly(s, now)
	}
	return true
}

// newSession creates a session for key with a collision-free forged tuple
// (reusing prefer when it is free), waiting for prod to accept the
// connection. It returns nil, counted, when a limit sheds the flow.
func (w *Worker) newSession(key sessionKey, isn Seq, capAt, now int64, prefer rewrite.Tuple) *session {
	if !w.admit(key) {
		return nil
	}
	m := &w.cfg.Maps[key.mapIdx]
	forged, ok := w.allocForged(key, m.Target, prefer)
	if !ok {
		w.ctr.inc(CtrShedPorts)
		return nil
	}
	s := &session{
		key: key, forged: forged,
		src: forged.SrcAddrPort(), dst: forged.DstAddrPort(),
		isn:    isn,
		sndUna: isn + 1, sndNxt: isn + 1, clientNxt: isn + 1,
		mss: w.cfg.MSS, rto: w.clampRTO(initialRTO),
		startAt: now, lastSeen: now, synCapAt: capAt, heapIdx: -1,
	}
	w.setState(s, stateProdOpening)
	w.sessions[key] = s
	w.byForged[forged] = s
	w.ctr.active.Add(1)
	w.markDirty(s) // its handshake deadline
	return s
}

// prodAccepted opens on the shadow a session prod has accepted: prod
// answered the client's SYN and the client acknowledged that answer, or,
// for a connection older than the capture, prod acknowledged its data.
func (w *Worker) prodAccepted(s *session, now int64) {
	switch s.opener {
	case openedByJoin:
		var o rewrite.Options
		if q := s.q(); len(q) > 0 {
			o = q[0].opts
		}
		w.synthesizeSYN(s, openedByJoin, o.HasTimestamps(), o.TSVal, now)
		w.ctr.inc(CtrJoinedMidstream)
	default:
		w.openShadow(s, now)
	}
}

// openShadow registers the session's forged flow with the agent, then
// sends its SYN (scenario 1).
func (w *Worker) openShadow(s *session, now int64) {
	if !s.registered {
		w.reg.Register(s.forged)
		s.registered = true
	}
	w.ctr.inc(CtrSessionsStarted)
	w.setState(s, stateSynSent)
	s.startAt = now
	w.startHandshake(s, now)
}

// shedFrom is the load (buffered bytes or sessions over their budget) at
// which new sessions start being shed; at full load all are.
const shedFrom = 0.5

// admit decides whether a new session may start. Past shedFrom of either
// budget, a growing share of new flows is refused, chosen by flow hash:
// deterministic (a retransmitted SYN gets the same answer), spread evenly
// over clients, and gradual, so copying degrades instead of collapsing
// (scenario 27). Refusals are counted by the budget that caused them.
func (w *Worker) admit(key sessionKey) bool {
	mem := float64(w.buffered) / float64(w.budget)
	sess := float64(len(w.byForged)) / float64(w.maxSess)
	load := max(mem, sess)
	if load < shedFrom {
		return true
	}
	shed := load >= 1
	if !shed {
		share := (load - shedFrom) / (1 - shedFrom) // of new flows to refuse
		h := rewrite.HashAddrPort(key.client.Src, key.client.SrcPort, w.cfg.Seed)
		shed = float64(h%1024) < share*1024
	}
	if !shed {
		return true
	}
	if mem >= sess {
		w.ctr.inc(CtrShedMemory)
	} else {
		w.ctr.inc(CtrShedSessions)
	}
	return false
}

// copyTTL is the TTL (hop limit) of every packet sent to the shadow: a
// fresh sender's, not what is left of the client's after its route to
// prod.
const copyTTL = 64

// maxPortProbes bounds, per worker, the ports allocForged tries for one
// session: past it the flow is shed (shed_no_forged_port) rather than the
// worker scanning 65,535 ports per packet.
const maxPortProbes = 256

// allocForged returns the forged tuple for a client tuple's copy: the
// copy's pool address with the client's port, or, if another session
// holds that tuple, the next port that hashes to this worker and is free,
// within maxPortProbes of this worker's. The Input queues every packet of
// the copy to the worker of its pool address and the client's port, and
// every tuple that worker forges hashes to it: the worker's table alone
// keeps forged tuples unique, whatever the copies and clients.
func (w *Worker) allocForged(key sessionKey, target netip.AddrPort, prefer rewrite.Tuple) (rewrite.Tuple, bool) {
	if prefer != (rewrite.Tuple{}) {
		if _, used := w.byForged[prefer]; !used {
			return prefer, true
		}
	}
	src := key.client.SrcAddrPort()
	addr := w.cfg.Pool.MapCopy(src.Addr(), int(key.copy))
	t := rewrite.TupleOf(netip.AddrPortFrom(addr, src.Port()), target)
	if _, used := w.byForged[t]; !used {
		return t, true
	}
	port := src.Port()
	for tries := 0; tries < maxPortProbes*w.n; tries++ {
		port++
		if port == 0 {
			port = 1
		}
		if workerFor(t.Src, port, w.cfg.Seed, w.n) != w.id {
			continue
		}
		t.SrcPort = port
		if _, used := w.byForged[t]; !used {
			return t, true
		}
	}
	return rewrite.Tuple{}, false
}

func (w *Worker) startHandshake(s *session, now int64) {
	w.send(s.synPkt.Bytes())
	s.synSentAt = now
	s.rtoAt = now + int64(s.rto)
	w.markDirty(s)
}

// joinMidstream starts a session for a flow first seen carrying data: the
// connection was open before capture started (scenario 5). Once prod
// acknowledges the data, a synthetic SYN opens it on the shadow one byte
// before it.
func (w *Worker) joinMidstream(key sessionKey, p *rewrite.Packet, capAt, now int64) *session {
	tcp := p.TCP()
	if !w.selectOpen(key, 0, true, now) {
		return nil
	}
	s := w.newSession(key, Seq(tcp.Seq())-1, capAt, now, rewrite.Tuple{})
	if s == nil {
		return nil
	}
	s.opener = openedByJoin
	// The data's ACK is the baseline: what prod sent before is not an
	// answer to anything the shadow will be sent.
	s.prodBase, s.baseOK = Seq(tcp.Ack()), true
	s.releasedAck = s.prodBase
	if !w.cfg.TrustInbound {
		w.applyEarly(s, now) // the data is queued next; a Flush looks at prod's ACK
	}
	if w.cfg.TrustInbound {
		var o rewrite.Options
		rewrite.ParseOptions(tcp, &o)
		if !w.synthesizeSYN(s, openedByJoin, o.HasTimestamps(), o.TSVal, now) {
			return nil
		}
		w.ctr.inc(CtrJoinedMidstream)
	}
	return s
}

// synthesizeSYN opens s on the shadow with a SYN of the copier's own: the
// configured MSS, window scale joinWindowScale and timestamps if the
// client uses them.
func (w *Worker) synthesizeSYN(s *session, by opener, withTS bool, tsVal uint32, now int64) bool {
	s.opener = by
	var optBuf [20]byte
	opts := rewrite.AppendMSS(optBuf[:0], w.cfg.SynMSS)
	opts = rewrite.AppendWindowScale(opts, joinWindowScale)
	if withTS {
		opts = rewrite.AppendTimestamps(opts, tsVal, 0)
	}
	seg := rewrite.Segment{
		Src: s.src, Dst: s.dst, Seq: uint32(s.isn), Flags: rewrite.FlagSYN,
		Window: 65535, Options: opts,
	}
	pb := getBuf(seg.Len())
	n, err := seg.Put(pb.b)
	if err != nil {
		pb.free()
		w.closeSession(s, EndShutdown, now)
		return false
	}
	pb.b = pb.b[:n]
	_ = s.synPkt.Decode(pb.b)
	rewrite.ParseOptions(s.synPkt.TCP(), &s.synOpts)
	s.syn = pb
	s.tsSent = tsVal
	w.hold(s, pb)
	w.openShadow(s, now)
	return true
}

// splitFastOpen takes the data off a fast-open SYN p held in pb: pb
// becomes the session's fast-open data, kept until the handshake, and the
// SYN, without it, moves to a small buffer of its own, which it returns
// (nil, pb freed, if the data does not fit the budgets).
func (w *Worker) splitFastOpen(s *session, pb *pktBuf, p *rewrite.Packet) *pktBuf {
	if !w.fits(s, pb.size()) {
		w.ctr.inc(CtrShedMemory)
		pb.free()
		return nil
	}
	w.fastOpen[s] = fastOpenData{pb: pb, lay: p.Layout(), len: p.PayloadLen()}
	s.fastOpen = true
	w.hold(s, pb)
	small := getBuf(len(p.Headers()))
	copy(small.b, p.Headers())
	*p = p.Layout().View(small.b)
	p.TrimPayload()
	return small
}

// queueFastOpen queues the data of the client's fast-open SYN as the
// first segment on the shadow's connection, now established, unless the
// client has sent it again already (prod took no cookie). Its pieces are
// counted before they are taken; it reports false if they do not fit.
func (w *Worker) queueFastOpen(s *session) bool {
	if !s.fastOpen {
		return true
	}
	fo := w.fastOpen[s]
	defer w.dropFastOpen(s)
	src := fo.lay.View(fo.pb.b)
	lo, hi, at, ok := s.placement(s.isn+1, (s.isn + 1).Add(fo.len))
	if !ok {
		return true // sent again after the handshake, queued as such
	}
	tcp := src.TCP()
	var o rewrite.Options
	rewrite.ParseOptions(tcp, &o)
	var optBuf [12]byte
	opts := optBuf[:0]
	if s.tsOK && o.HasTimestamps() {
		opts = rewrite.AppendTimestamps(opts, o.TSVal, 0)
	}
	g := segment{seq: s.isn + 1, end: (s.isn + 1).Add(fo.len), ack: s.prodBase, capAt: s.synCapAt}
	seg := rewrite.Segment{
		Src: s.src, Dst: s.dst, Seq: uint32(lo), Flags: rewrite.FlagACK | rewrite.FlagPSH,
		Window: tcp.Window(), Options: opts, Payload: src.Payload()[lo.Sub(g.seq):hi.Sub(g.seq)],
	}
	n := seg.Len()
	if !w.fits(s, bufClassSize(n)) {
		return false
	}
	npb := getBuf(n)
	if npb == nil {
		return false
	}
	if _, err := seg.Put(npb.b); err != nil {
		npb.free()
		return false
	}
	npb.b = npb.b[:n]
	g.pb, g.seq, g.end = npb, lo, hi
	if g.pkt.Decode(npb.b) != nil {
		npb.free()
		return false
	}
	rewrite.ParseOptions(g.pkt.TCP(), &g.opts)
	if hi.After(s.clientNxt) {
		s.clientNxt = hi
	}
	if !w.queueSeg(s, at, &g) {
		npb.free()
	}
	return true
}

// dropFastOpen releases the fast-open data s holds, if any.
func (w *Worker) dropFastOpen(s *session) {
	if !s.fastOpen {
		return
	}
	w.release(s, w.fastOpen[s].pb)
	delete(w.fastOpen, s)
	s.fastOpen = false
}
