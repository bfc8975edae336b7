package tcpstate

import (
	"net/netip"
	"time"

	"github.com/tcpshadow/tcpshadow/rewrite"
)

// Sender transmits IP packets toward the shadow. Send must not block and
// must not keep pkt after returning. Each worker owns its Sender.
type Sender interface {
	Send(pkt []byte) error
}

// Flusher is a Sender that queues packets; Flush sends them and reports
// how many the kernel refused. Workers flush at the end of every batch of
// events, so queued packets wait microseconds, not longer.
type Flusher interface {
	Flush() (failed int, err error)
}

// Registrar tells the intercept agent which forged flows belong to this
// daemon, so it relays their replies. Flows are in the copier → shadow
// direction. Both methods must not block.
type Registrar interface {
	Register(flow rewrite.Tuple)
	Deregister(flow rewrite.Tuple)
}

// Worker owns the sessions of the flows that hash to it. All methods run on
// one goroutine; times are monotonic nanoseconds from the caller's clock,
// which lets tests drive a Worker with a fake clock.
type Worker struct {
	cfg      *Config
	id, n    int
	out      Sender
	flusher  Flusher // out, if it batches
	reg      Registrar
	ctr      *counters
	sessions map[sessionKey]*session
	byForged map[rewrite.Tuple]*session
	timers   timerHeap
	dirty    []*session
	buffered int64 // bytes held by this worker's sessions
	budget   int64
	maxSess  int
	ctl      [rewrite.IPv6HeaderLen + rewrite.TCPMaxHeaderLen]byte
}

func newWorker(cfg *Config, id, n int, out Sender, reg Registrar, ctr *counters) *Worker {
	f, _ := out.(Flusher)
	return &Worker{
		cfg: cfg, id: id, n: n, out: out, flusher: f, reg: reg, ctr: ctr,
		sessions: make(map[sessionKey]*session),
		byForged: make(map[rewrite.Tuple]*session),
		budget:   cfg.MaxBufferBytes / int64(n),
		maxSess:  max(1, cfg.MaxSessions/n),
	}
}

// workerFor picks the worker owning a forged client endpoint. Captured
// packets and relayed replies both carry it, so both reach the same worker
// without a shared table.
func workerFor(addr [16]byte, port uint16, seed uint64, n int) int {
	if n == 1 {
		return 0
	}
	return int(rewrite.HashAddrPort(addr, port, seed) % uint64(n))
}

// Sessions returns the number of sessions held, lingering ones and old
// copies finishing after a port reuse included.
func (w *Worker) Sessions() int { return len(w.byForged) }

// NextDeadline returns when Tick next has work, or 0.
func (w *Worker) NextDeadline() int64 { return w.timers.next() }

func (w *Worker) markDirty(s *session) {
	if !s.dirty {
		s.dirty = true
		w.dirty = append(w.dirty, s)
	}
}

// HandleCaptured processes one captured client packet held in pb, which
// the worker now owns. mapIdx is the map that matched it.
func (w *Worker) handleCaptured(pb *pktBuf, capAt int64, mapIdx int, now int64) {
	var p rewrite.Packet
	if err := p.Decode(pb.b); err != nil {
		pb.free()
		w.ctr.inc(CtrIgnoredBadHeader)
		return
	}
	key := sessionKey{client: p.Tuple(), mapIdx: uint8(mapIdx)}
	tcp := p.TCP()
	flags := tcp.Flags()
	s := w.sessions[key]
	if flags&rewrite.FlagSYN != 0 {
		if flags&rewrite.FlagACK != 0 || flags&(rewrite.FlagRST|rewrite.FlagFIN) != 0 {
			pb.free()
			w.ctr.inc(CtrOddPackets) // scenario 25: not a client's opening
			return
		}
		w.clientSYN(s, key, pb, &p, capAt, now)
		return
	}
	if s == nil {
		if p.PayloadLen() == 0 || flags&rewrite.FlagRST != 0 {
			pb.free()
			w.ctr.inc(CtrIgnoredNoSession) // scenario 5: pure ACK/FIN/RST
			return
		}
		if s = w.joinMidstream(key, &p, capAt, now); s == nil {
			pb.free()
			return
		}
	}
	if s.state == stateClosed {
		if s.reconnectable && flags&(rewrite.FlagFIN|rewrite.FlagRST) != 0 {
			// The client finished too: no fresh connection will be
			// needed, the flow's place need not be kept.
			s.reconnectable = false
			s.lingerEnd = min(s.lingerEnd, now+int64(w.cfg.Linger))
			w.markDirty(s)
		}
		// The shadow closed a connection the client keeps using
		// (scenario 19): its next data opens a fresh one.
		if !s.reconnectable || p.PayloadLen() == 0 || flags&rewrite.FlagRST != 0 {
			pb.free()
			w.ctr.inc(CtrIgnoredNoSession)
			return
		}
		if s = w.reconnect(s, capAt, now); s == nil {
			pb.free()
			return
		}
	}
	s.lastSeen = now
	w.clientPacket(s, pb, &p, capAt, now)
}

// clientSYN handles a captured SYN: a new session, a retransmission
// (scenario 2) or port reuse with a new ISN (scenario 3).
func (w *Worker) clientSYN(s *session, key sessionKey, pb *pktBuf, p *rewrite.Packet, capAt, now int64) {
	isn := Seq(p.TCP().Seq())
	var reuse rewrite.Tuple
	if s != nil {
		if s.isn == isn && !s.joined {
			pb.free()
			w.ctr.inc(CtrSynRetransmit)
			return
		}
		if s.state != stateClosed && s.sndUna != s.clientNxt {
			// Scenario 3 while the copy of the old connection is still
			// under way (the shadow lags prod): let it finish on its own
			// forged tuple; the new connection gets another.
			delete(w.sessions, key)
			w.ctr.inc(CtrPortReuseLagging)
		} else {
			reuse = s.forged
			if s.state != stateClosed {
				w.endSession(s, EndPortReuse, now)
			}
			w.removeSession(s, false)
		}
	}
	s = w.newSession(key, isn, capAt, now, reuse)
	if s == nil {
		pb.free()
		return
	}
	var o rewrite.Options
	rewrite.ParseOptions(p.TCP(), &o)
	// No SACK blocks are ever produced, so SACK must not be offered
	// (scenario 23).
	if o.SACKPermitted {
		p.ClearOptions(rewrite.OptSACKPermitted)
		o.SACKPermitted = false
	}
	p.Retarget(s.src, s.dst)
	s.syn, s.synPkt, s.synOpts = pb, *p, o
	s.tsSent = o.TSVal
	s.clientWnd = p.TCP().Window()
	w.account(s, pb.size())
	w.startHandshake(s, now)
}

// newSession creates a session for key with a collision-free forged tuple
// (reusing prefer when it is free) and registers its flow with the agent.
// It returns nil, counted, when a limit sheds the flow.
func (w *Worker) newSession(key sessionKey, isn Seq, capAt, now int64, prefer rewrite.Tuple) *session {
	if !w.admit(key) {
		return nil
	}
	m := &w.cfg.Maps[key.mapIdx]
	forged, ok := w.allocForged(key.client, m.Target, prefer)
	if !ok {
		w.ctr.inc(CtrShedPorts)
		return nil
	}
	if prefer != (rewrite.Tuple{}) && prefer != forged {
		w.reg.Deregister(prefer)
	}
	s := &session{
		key: key, forged: forged,
		src: forged.SrcAddrPort(), dst: forged.DstAddrPort(),
		state: stateSynSent, isn: isn,
		sndUna: isn + 1, sndNxt: isn + 1, clientNxt: isn + 1,
		mss: w.cfg.MSS, rto: w.clampRTO(time.Second), // RFC 6298 §2.1
		startAt: now, lastSeen: now, synCapAt: capAt, heapIdx: -1,
	}
	w.sessions[key] = s
	w.byForged[forged] = s
	w.ctr.active.Add(1)
	w.ctr.inc(CtrSessionsStarted)
	w.reg.Register(forged) // before the SYN leaves (scenario 1)
	return s
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

// allocForged returns the forged tuple for a client tuple: the pool
// address with the client's port, or, if another session holds that tuple,
// the next port that hashes to this worker and is free.
func (w *Worker) allocForged(client rewrite.Tuple, target netip.AddrPort, prefer rewrite.Tuple) (rewrite.Tuple, bool) {
	if prefer != (rewrite.Tuple{}) {
		if _, used := w.byForged[prefer]; !used {
			return prefer, true
		}
	}
	src := client.SrcAddrPort()
	addr := w.cfg.Pool.Map(src.Addr())
	t := rewrite.TupleOf(netip.AddrPortFrom(addr, src.Port()), target)
	if _, used := w.byForged[t]; !used {
		return t, true
	}
	port := src.Port()
	for tries := 0; tries < 65535; tries++ {
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
// connection was open before capture started (scenario 5). A synthetic SYN
// opens it on the shadow one byte before the data.
func (w *Worker) joinMidstream(key sessionKey, p *rewrite.Packet, capAt, now int64) *session {
	tcp := p.TCP()
	s := w.newSession(key, Seq(tcp.Seq())-1, capAt, now, rewrite.Tuple{})
	if s == nil {
		return nil
	}
	var o rewrite.Options
	rewrite.ParseOptions(tcp, &o)
	// The data's ACK is the baseline: what prod sent before is not a
	// response to anything we will send.
	s.prodAck, s.prodAckOK = Seq(tcp.Ack()), true
	if !w.synthesizeSYN(s, o.HasTimestamps(), o.TSVal, now) {
		return nil
	}
	w.ctr.inc(CtrJoinedMidstream)
	return s
}

// synthesizeSYN opens s on the shadow with a SYN of the copier's own: the
// configured MSS, window scale 7 (the client's own scale is unknown; 7 is
// Linux's usual) and timestamps if the client uses them.
func (w *Worker) synthesizeSYN(s *session, withTS bool, tsVal uint32, now int64) bool {
	s.joined = true
	var optBuf [20]byte
	opts := rewrite.AppendMSS(optBuf[:0], w.cfg.SynMSS)
	opts = rewrite.AppendWindowScale(opts, 7)
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
	w.account(s, pb.size())
	w.startHandshake(s, now)
	return true
}

// maxReconnects bounds fresh shadow connections for one client flow in a
// row without the shadow acknowledging anything, so a shadow that resets
// every request cannot make the copier loop.
const maxReconnects = 3

// reconnect opens a fresh connection to the shadow for the client flow of
// old, which the shadow closed or reset while the client kept going, and
// moves old's unacknowledged and unsent data to it (scenario 19). The new
// connection uses another forged port: the old tuple may still be in
// TIME_WAIT on the shadow.
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
	s.reconnects = old.reconnects + 1
	s.prodAck, s.prodAckOK = old.prodAck, old.prodAckOK
	s.clientNxt, s.clientWnd = old.clientNxt, old.clientWnd
	s.finSeen, s.finSeq = old.finSeen, old.finSeq
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
		w.account(s, g.pb.size())
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
	old.reconnectable = false
	w.ctr.inc(CtrReconnects)
	if !w.synthesizeSYN(s, old.tsOK, old.tsSent, now) {
		return nil
	}
	return s
}

// clientPacket handles a non-SYN client packet of a live session.
func (w *Worker) clientPacket(s *session, pb *pktBuf, p *rewrite.Packet, capAt, now int64) {
	tcp := p.TCP()
	flags := tcp.Flags()
	seq := Seq(tcp.Seq())
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
		if !s.prodAckOK {
			s.prodAck, s.prodAckOK = Seq(tcp.Ack()), true // handshake ACK
		}
	}
	if flags&rewrite.FlagRST != 0 {
		pb.free()
		w.endSession(s, EndClientReset, now) // scenario 18
		return
	}
	if flags&rewrite.FlagFIN != 0 && !s.finSeen {
		// Scenario 17: data first; the FIN goes once the shadow has
		// acknowledged everything before it.
		s.finSeen, s.finSeq = true, seq.Add(plen)
	}
	if plen == 0 {
		pb.free()
		w.markDirty(s)
		return
	}
	if flags&rewrite.FlagFIN != 0 {
		p.SetFlags(flags &^ rewrite.FlagFIN)
	}
	w.enqueue(s, pb, p, &o, capAt, now)
	w.markDirty(s)
}

// enqueue rewrites a captured data segment toward the shadow and queues it
// in sequence order, dropping what is already queued (scenario 12) and
// splitting what exceeds the MSS (scenario 24).
func (w *Worker) enqueue(s *session, pb *pktBuf, p *rewrite.Packet, o *rewrite.Options, capAt, now int64) {
	tcp := p.TCP()
	g := segment{
		pb: pb, seq: Seq(tcp.Seq()), ack: Seq(tcp.Ack()), capAt: capAt,
	}
	g.end = g.seq.Add(p.PayloadLen())
	lo, hi, at, ok := s.placement(g.seq, g.end)
	if !ok {
		pb.free()
		w.ctr.inc(CtrClientDupData)
		return
	}
	// Bounds first, so that they hold exactly (scenario 27).
	if s.qBytes+pb.size() > w.cfg.MaxSessionBytes || w.buffered+int64(pb.size()) > w.budget {
		pb.free()
		w.ctr.inc(CtrShedMemory)
		w.endSession(s, EndBufferLimit, now)
		return
	}
	if o.SACK {
		p.ClearOptions(rewrite.OptSACK) // blocks in prod's sequence space
	}
	if s.state == stateEstablished && !s.tsOK && o.HasTimestamps() {
		p.ClearOptions(rewrite.OptTimestamps)
		rewrite.ParseOptions(p.TCP(), o)
	}
	p.Retarget(s.src, s.dst) // full checksums: captured ones may be partial (offload)
	g.pkt, g.opts = *p, *o
	// Only data that extends the stream moves the request boundary.
	if at == len(s.q()) {
		if s.prodAckOK && g.ack.After(s.prodAck) {
			g.expect = g.ack.Sub(s.prodAck)
		}
		if !s.prodAckOK || g.ack.After(s.prodAck) {
			s.prodAck, s.prodAckOK = g.ack, true
		}
	}
	if lo != g.seq || hi != g.end {
		w.ctr.inc(CtrClientTrimmed)
		ng, ok := w.reslice(s, &g, lo, hi)
		pb.free()
		if !ok {
			return
		}
		g = ng
	}
	if g.len() > s.payloadRoom(&g) {
		w.insertSplit(s, at, &g)
	} else {
		s.insertSeg(at, g)
		w.account(s, g.pb.size())
	}
	if g.end.After(s.clientNxt) {
		s.clientNxt = g.end
	}
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

// reslice builds a new segment holding bytes [lo, hi) of g.
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

// insertSplit queues g as MSS-sized pieces at index at and frees g. The
// MSS bounds payload plus TCP options (RFC 6691), so options come off it.
func (w *Worker) insertSplit(s *session, at int, g *segment) {
	w.ctr.inc(CtrSplit)
	room := max(s.mss-(g.pkt.TCP().HeaderLen()-rewrite.TCPMinHeaderLen), 1)
	for lo := g.seq; lo.Before(g.end); {
		hi := minSeq(lo.Add(room), g.end)
		ng, ok := w.reslice(s, g, lo, hi)
		if !ok {
			break
		}
		if lo == g.seq {
			ng.expect = g.expect
		}
		s.insertSeg(at, ng)
		w.account(s, ng.pb.size())
		at++
		lo = hi
	}
	g.pb.free()
}

// payloadRoom is the largest payload a segment with g's options may carry.
func (s *session) payloadRoom(g *segment) int {
	return s.mss - (g.pkt.TCP().HeaderLen() - rewrite.TCPMinHeaderLen)
}

// account adds n bytes (negative to release) to the session's and the
// worker's buffered totals.
func (w *Worker) account(s *session, n int) {
	s.qBytes += n
	w.buffered += int64(n)
	w.ctr.buffered.Add(int64(n))
}

// handleReply processes one relayed reply header from the shadow.
func (w *Worker) handleReply(hdr []byte, now int64) {
	var p rewrite.Packet
	if err := p.DecodeHeader(hdr); err != nil {
		w.ctr.inc(CtrRepliesBad)
		return
	}
	s := w.byForged[p.Tuple().Reverse()]
	if s == nil {
		w.ctr.inc(CtrRepliesNoSession)
		return
	}
	w.ctr.inc(CtrReplies)
	s.lastSeen = now
	w.shadowPacket(s, &p, now)
}

func (w *Worker) shadowPacket(s *session, p *rewrite.Packet, now int64) {
	tcp := p.TCP()
	flags := tcp.Flags()
	seq, ack := Seq(tcp.Seq()), Seq(tcp.Ack())
	plen := p.PayloadLen()
	hasACK := flags&rewrite.FlagACK != 0
	if s.state == stateClosed {
		if s.finSent && ack == s.ourFin+1 && plen == 0 && flags&(rewrite.FlagFIN|rewrite.FlagRST) == 0 {
			return // the shadow acknowledging our FIN: the close completing
		}
		// Scenario 20: a late reply means the shadow still holds state.
		if flags&rewrite.FlagRST == 0 && hasACK {
			w.sendCtl(s, rewrite.FlagRST, ack, 0)
			w.ctr.inc(CtrLateReplyRST)
		}
		return
	}
	var o rewrite.Options
	rewrite.ParseOptions(tcp, &o)
	if s.state == stateSynSent {
		switch {
		case flags&(rewrite.FlagSYN|rewrite.FlagACK|rewrite.FlagRST) == rewrite.FlagSYN|rewrite.FlagACK && ack == s.isn+1:
			w.establish(s, p, &o, now)
		case flags&rewrite.FlagRST != 0:
			if hasACK && ack == s.isn+1 {
				w.closeSession(s, EndShadowReset, now) // nothing listens there
			}
		default:
			// Scenario 6: a reply of an earlier incarnation of this
			// tuple. Reset it and open again.
			w.ctr.inc(CtrRepliesStale)
			if hasACK {
				w.sendCtl(s, rewrite.FlagRST, ack, 0)
			}
			w.send(s.synPkt.Bytes())
		}
		return
	}
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
	if s.tsOK && o.HasTimestamps() && tsAfter(o.TSVal, s.tsRecent) {
		s.tsRecent = o.TSVal
	}
	if hasACK {
		w.onAck(s, ack, int(tcp.Window())<<s.sndWS, plen == 0 && flags&rewrite.FlagFIN == 0, now)
	}
	if plen > 0 || flags&rewrite.FlagFIN != 0 {
		end := seq.Add(plen)
		if flags&rewrite.FlagFIN != 0 {
			end++
		}
		if end.After(s.rcvNxt) {
			// A gap in what the agent relayed is skipped: the shadow did
			// send it, so acknowledging it is true to the shadow.
			n := plen
			if seq.BeforeEq(s.rcvNxt) {
				n = min(plen, end.Sub(s.rcvNxt))
			}
			if plen > 0 {
				s.respBytes += n
				s.lastReplyAt = now
			}
			// Delayed ACK, as a real client's stack does (RFC 1122
			// §4.2.3.2, RFC 5681 §4.2): at once for a gap skipped, a FIN
			// or every second full segment; otherwise within AckDelay,
			// usually riding on the next request.
			s.unacked += n
			if seq.After(s.rcvNxt) || flags&rewrite.FlagFIN != 0 || s.unacked >= 2*s.mss {
				s.needAck = true
			} else if s.ackAt == 0 {
				s.ackAt = now + int64(w.cfg.AckDelay)
			}
			s.rcvNxt = end
			if flags&rewrite.FlagFIN != 0 {
				s.shadowFin = true
				// The shadow closes first while the client goes on (its
				// keep-alive is shorter than prod's) or still has data
				// queued: finish this connection, move what is left to a
				// fresh one (scenario 19). With nothing left and the
				// client closed too, the close is an ordinary one.
				if !s.finSent && (!s.finSeen || s.sndUna != s.clientNxt) {
					w.sendCtl(s, rewrite.FlagFIN|rewrite.FlagACK, s.sndNxt, s.rcvNxt)
					s.finSent, s.ourFin = true, s.sndNxt
					w.shadowEnded(s, EndShadowClosed, now)
					return
				}
			}
		} else {
			w.ctr.inc(CtrShadowDupData) // scenario 16: re-ACK
			s.needAck = true
		}
	} else if seq.Before(s.rcvNxt) {
		// A segment below what we acknowledged: the shadow's zero-window
		// or keep-alive probe. RFC 9293 §3.10.7.4: answer with an ACK.
		s.needAck = true
	}
	w.markDirty(s)
}

// establish completes the handshake on the shadow's SYN-ACK.
func (w *Worker) establish(s *session, p *rewrite.Packet, o *rewrite.Options, now int64) {
	tcp := p.TCP()
	s.state = stateEstablished
	s.rcvNxt = Seq(tcp.Seq()) + 1
	// RFC 7323 §2.2: the SYN-ACK's window is never scaled; scaling holds
	// only if both sides offered it.
	s.sndWnd = int(tcp.Window())
	if s.synOpts.HasWindowScale() && o.HasWindowScale() {
		s.sndWS = min(o.WindowScale, 14)
	}
	s.tsOK = s.synOpts.HasTimestamps() && o.HasTimestamps()
	s.tsRecent = o.TSVal
	mss := 536 // RFC 9293 §3.7.1 default
	if o.HasMSS() {
		mss = int(o.MSS)
	}
	s.mss = max(64, min(w.cfg.MSS, mss))
	rtt := time.Duration(now - s.synSentAt)
	s.srtt, s.rttvar = rtt, rtt/2
	s.rto = w.clampRTO(s.srtt + 4*s.rttvar)
	s.rtoAt, s.retries = 0, 0
	w.account(s, -s.syn.size())
	s.syn.free()
	s.syn = nil
	s.reqSentAt, s.reqCapAt, s.respBytes = s.synSentAt, s.synCapAt, 0
	w.sendCtl(s, rewrite.FlagACK, s.sndNxt, s.rcvNxt) // third packet of the handshake
	w.normalizeQueue(s)
	w.markDirty(s)
}

// normalizeQueue adapts data queued during the handshake to what the
// shadow negotiated: no timestamps if it refused them, MSS-sized pieces.
func (w *Worker) normalizeQueue(s *session) {
	for i := 0; i < len(s.q()); i++ {
		g := &s.q()[i]
		if !s.tsOK && g.opts.HasTimestamps() {
			g.pkt.ClearOptions(rewrite.OptTimestamps)
			rewrite.ParseOptions(g.pkt.TCP(), &g.opts)
		}
		if g.len() > s.payloadRoom(g) {
			old := *g
			w.account(s, -old.pb.size())
			s.removeSegAt(i)
			before := len(s.q())
			w.insertSplit(s, i, &old)
			i += len(s.q()) - before - 1
		}
	}
}

// removeSegAt deletes the unsent segment at index i (its buffer is the
// caller's).
func (s *session) removeSegAt(i int) {
	q := s.q()
	copy(q[i:], q[i+1:])
	q[len(q)-1] = segment{}
	s.qbuf = s.qbuf[:len(s.qbuf)-1]
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
			w.account(s, -s.q()[0].pb.size())
			s.popSeg().free()
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
			w.account(s, -g.pb.size())
			s.popSeg().free()
		}
		s.sndUna = ack
		s.retries, s.dupAcks, s.reconnects = 0, 0, 0
		if s.sndUna == s.sndNxt {
			s.rtoAt = 0
		} else {
			s.rtoAt = now + int64(s.rto)
		}
	case ack == s.sndUna && s.sndUna != s.sndNxt && pure && wnd == s.sndWnd:
		// Scenario 13: three duplicate ACKs mean a lost segment.
		s.dupAcks++
		if s.dupAcks == 3 {
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

// Flush sends what the events since the last Flush made possible: queued
// data, ACKs for the shadow's data, FINs; then reschedules timers.
func (w *Worker) Flush(now int64) {
	for i, s := range w.dirty {
		w.dirty[i] = nil
		s.dirty = false
		if s.heapIdx == -2 { // removed
			continue
		}
		if s.state == stateEstablished {
			w.trySend(s, now)
		}
		if s.state == stateEstablished && s.needAck {
			w.sendCtl(s, rewrite.FlagACK, s.sndNxt, s.rcvNxt)
		}
		s.needAck = false
		if s.state == stateEstablished && s.finSent && s.sndUna == s.ourFin+1 && s.shadowFin {
			w.closeSession(s, EndClosed, now)
		}
		w.reschedule(s, now)
	}
	w.dirty = w.dirty[:0]
	w.flushOut()
}

// flushOut sends what a batching Sender holds.
func (w *Worker) flushOut() {
	if w.flusher == nil {
		return
	}
	if failed, _ := w.flusher.Flush(); failed > 0 {
		w.ctr.add(CtrSendErrors, failed)
	}
}

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
	if s.finSeen && !s.finSent && s.sndNxt == s.finSeq && s.sndUna == s.finSeq {
		w.sendCtl(s, rewrite.FlagFIN|rewrite.FlagACK, s.finSeq, s.rcvNxt)
		s.finSent, s.ourFin = true, s.finSeq
		s.sndNxt = s.finSeq + 1
		s.rtoAt = now + int64(s.rto)
		s.needAck = false
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
	var optBuf [12]byte
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

// endSession ends a session abnormally: an RST frees the shadow's state
// (scenario 20), then the session lingers.
func (w *Worker) endSession(s *session, reason EndReason, now int64) {
	switch s.state {
	case stateSynSent:
		w.sendCtl(s, rewrite.FlagRST, s.isn+1, 0)
	case stateEstablished:
		w.sendCtl(s, rewrite.FlagRST|rewrite.FlagACK, s.sndNxt, s.rcvNxt)
	}
	w.closeSession(s, reason, now)
}

// closeSession releases a session's buffers at once (scenario 27) and lets
// it linger to absorb late replies.
func (w *Worker) closeSession(s *session, reason EndReason, now int64) {
	w.closeSessionKeep(s, reason, now, false)
}

// closeSessionKeep is closeSession that may keep the queued data, for
// reconnect to move it.
func (w *Worker) closeSessionKeep(s *session, reason EndReason, now int64, keepQueue bool) {
	if s.state == stateClosed {
		return
	}
	s.state = stateClosed
	w.ctr.ended[reason].Add(1)
	if !keepQueue {
		w.freeQueue(s)
	}
	if s.syn != nil {
		w.account(s, -s.syn.size())
		s.syn.free()
		s.syn = nil
	}
	s.rtoAt, s.paceAt, s.gapSince = 0, 0, 0
	s.lingerEnd = now + int64(w.cfg.Linger)
	w.markDirty(s)
}

// shadowEnded handles the shadow closing or resetting a connection. If the
// client has not finished, its remaining data goes on a fresh connection at
// once, or when it next sends (scenario 19).
func (w *Worker) shadowEnded(s *session, reason EndReason, now int64) {
	// Client data the shadow has not acknowledged, sent or not: it goes
	// again on a fresh connection, the client's FIN (if any) after it.
	pending := s.sndUna != s.clientNxt && len(s.q()) > 0
	w.closeSessionKeep(s, reason, now, pending)
	switch {
	case pending:
		w.reconnect(s, s.q()[0].capAt, now)
	case !s.finSeen:
		// Keep the flow's place while the client may still use its
		// connection to prod: its next data opens a fresh one.
		s.reconnectable = true
		s.lingerEnd = now + int64(max(w.cfg.Linger, w.cfg.IdleTimeout))
	}
	w.freeQueue(s)
}

// freeQueue releases every queued segment.
func (w *Worker) freeQueue(s *session) {
	for len(s.q()) > 0 {
		w.account(s, -s.q()[0].pb.size())
		s.popSeg().free()
	}
	s.qbuf, s.qhead, s.nsent = nil, 0, 0
}

// removeSession forgets a session; deregister tells the agent too.
func (w *Worker) removeSession(s *session, deregister bool) {
	w.timers.remove(s)
	s.heapIdx = -2
	if w.sessions[s.key] == s {
		delete(w.sessions, s.key)
	}
	if w.byForged[s.forged] == s {
		delete(w.byForged, s.forged)
	}
	w.ctr.active.Add(-1)
	if deregister {
		w.reg.Deregister(s.forged)
	}
}

// reschedule puts the session's next deadline on the timer heap.
func (w *Worker) reschedule(s *session, now int64) {
	if s.heapIdx == -2 {
		return
	}
	next := int64(0)
	at := func(t int64) {
		if t != 0 && (next == 0 || t < next) {
			next = t
		}
	}
	switch s.state {
	case stateClosed:
		at(s.lingerEnd)
	case stateSynSent:
		at(s.startAt + int64(w.cfg.HandshakeTimeout))
		at(s.rtoAt)
	case stateEstablished:
		at(s.lastSeen + int64(w.cfg.IdleTimeout))
		at(s.rtoAt)
		at(s.paceAt)
		at(s.ackAt)
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
	switch s.state {
	case stateClosed:
		if now >= s.lingerEnd {
			w.removeSession(s, true)
			return
		}
	case stateSynSent:
		if now-s.startAt >= int64(w.cfg.HandshakeTimeout) {
			w.endSession(s, EndHandshakeTimeout, now) // scenario 4
			break
		}
		if s.rtoAt != 0 && now >= s.rtoAt {
			w.ctr.inc(CtrRetransmits)
			w.send(s.synPkt.Bytes())
			s.rto = min(2*s.rto, w.cfg.RTOMax)
			s.rtoAt = now + int64(s.rto)
		}
	case stateEstablished:
		switch {
		case now-s.lastSeen >= int64(w.cfg.IdleTimeout):
			w.endSession(s, EndIdle, now) // scenario 26
		case s.gapSince != 0 && now-s.gapSince >= int64(w.cfg.GapTimeout):
			w.endSession(s, EndCaptureGap, now) // scenario 11
		case s.rtoAt != 0 && now >= s.rtoAt:
			s.retries++
			if s.retries > w.cfg.MaxRetransmits {
				w.endSession(s, EndRetransmitLimit, now)
				break
			}
			w.retransmit(s, now) // scenario 13: exponential backoff
			s.rto = min(2*s.rto, w.cfg.RTOMax)
			s.rtoAt = now + int64(s.rto)
		}
		if s.state == stateEstablished && s.paceAt != 0 && now >= s.paceAt {
			s.paceAt = 0
			w.markDirty(s)
		}
		if s.state == stateEstablished && s.ackAt != 0 && now >= s.ackAt {
			s.needAck, s.ackAt = true, 0 // the delayed ACK is due
			w.markDirty(s)
		}
	}
	w.reschedule(s, now)
}

// Shutdown ends every session with an RST so the shadow frees its state,
// and deregisters every flow.
func (w *Worker) Shutdown(now int64) {
	for _, s := range w.byForged {
		if s.state != stateClosed {
			w.endSession(s, EndShutdown, now)
		}
		w.removeSession(s, true)
	}
	for i := range w.dirty {
		w.dirty[i] = nil
	}
	w.dirty = w.dirty[:0]
	w.flushOut()
}
