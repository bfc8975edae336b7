package intercept

import (
	"context"
	"net/netip"
	"time"

	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

type opKind uint8

const (
	opRegister opKind = iota + 1
	opDeregister
	opPeerUp
	opPeerDown
)

// flowOp is a peer's news for the relay: it came, went, or (de)registered
// flows.
type flowOp struct {
	kind  opKind
	peer  *agentPeer
	flows []rewrite.Tuple
}

// parkedReply is a SYN-ACK or RST that arrived before its flow's
// registration: the copy daemon sends the SYN right after registering, so
// the answer can win the race (scenario 1).
type parkedReply struct {
	h  capturedHdr
	at time.Time
}

// flowEntry is one registered flow.
type flowEntry struct {
	key  rewrite.Tuple // reply direction
	peer *agentPeer
	seen time.Duration // relay clock of its last registration or reply
	idx  int           // its place in relay.entries
	h2   bool          // walked for H2 records (h2relay.go)
}

const (
	// sweepEvery and sweepBatch pace the expiry of idle flows: a few
	// thousand flows looked at every tick, so that a table of a million
	// is swept in well under a lease without ever stalling the relay.
	sweepEvery = 100 * time.Millisecond
	sweepBatch = 4096
)

// relay owns the flow table, the parked replies and the peers' batches.
// Only the relay goroutine touches it, so none of it is locked.
type relay struct {
	a       *Agent
	owners  map[rewrite.Tuple]*flowEntry // key: reply direction
	entries []*flowEntry                 // every flow, for the expiry sweep
	cursor  int                          // where the sweep goes on
	peers   map[*agentPeer]struct{}
	pools   []wire.Pool           // every live peer's: what may be parked
	park    []parkedReply         // ring of MaxParked; the oldest is evicted
	parkAt  map[rewrite.Tuple]int // flow → its slot in park
	next    int                   // the slot the next parked reply takes
	timer   *time.Timer           // flush deadline of the earliest batch
	armed   time.Time             // when timer fires; zero: not armed
	epoch   time.Time             // the relay clock's zero
	local   map[netip.Addr]bool   // this host's addresses, read at localAt
	localAt time.Time
	h2Ports map[uint16]int // shadow port → live daemons naming it in H2Ports
}

// localAddrsEvery is how often the host's addresses are read again.
const localAddrsEvery = 5 * time.Second

// isLocal reports whether addr (16-byte form) is one of this host's.
func (r *relay) isLocal(addr [16]byte, now time.Time) bool {
	if r.local == nil || now.Sub(r.localAt) > localAddrsEvery {
		r.local = make(map[netip.Addr]bool)
		for _, a := range r.a.cfg.LocalAddrs() {
			r.local[a.Unmap()] = true
		}
		r.localAt = now
	}
	return r.local[netip.AddrFrom16(addr).Unmap()]
}

// clock is the relay's monotonic clock.
func (r *relay) clock(now time.Time) time.Duration { return now.Sub(r.epoch) }

// relayLoop is the relay goroutine: it takes captured headers and the
// peers' flow ops, one at a time, until ctx is done; then it closes every
// peer.
func (a *Agent) relayLoop(ctx context.Context) {
	r := &relay{
		a: a, owners: make(map[rewrite.Tuple]*flowEntry), peers: make(map[*agentPeer]struct{}),
		park: make([]parkedReply, a.cfg.MaxParked), parkAt: make(map[rewrite.Tuple]int),
		timer: time.NewTimer(time.Hour), epoch: time.Now(), h2Ports: make(map[uint16]int),
	}
	defer r.timer.Stop()
	sweep := time.NewTicker(sweepEvery)
	defer sweep.Stop()
	for {
		select {
		case <-ctx.Done():
			for p := range r.peers {
				p.close()
				r.dropPeer(p)
			}
			return
		case h := <-a.hdrs:
			r.onHeader(&h, time.Now())
		case op := <-a.ops:
			r.onOp(op, time.Now())
		case <-r.timer.C:
			r.armed = time.Time{}
		case now := <-sweep.C:
			r.sweep(now)
		}
		// Nothing more captured and queued: send what there is now. A
		// block of replies from the capture still leaves in one batch
		// (the capture goroutine queues it whole), and a lone reply at a
		// low rate costs no timer wake-up. FlushDelay bounds the rest.
		r.flushDue(time.Now(), len(a.hdrs) == 0)
	}
}

// onHeader relays a captured header to its flow's owner, or parks it if
// it is a SYN-ACK or RST to a pool address that may have beaten its
// registration. A reply to no pool is no copy daemon's business: counted
// and forgotten.
func (r *relay) onHeader(h *capturedHdr, now time.Time) {
	e := r.owners[h.key]
	if e == nil {
		switch {
		case !inPools(r.pools, h.key.Dst):
			r.a.st.outsidePools.Add(1)
		case !h.park:
			r.a.st.noOwner.Add(1)
		default:
			r.parkReply(h, now)
		}
		return
	}
	e.seen = r.clock(now)
	r.deliver(e.peer, h, now)
}

// inPools reports whether addr (16-byte form) lies in one of pools.
func inPools(pools []wire.Pool, addr [16]byte) bool {
	if len(pools) == 0 {
		return false
	}
	a := netip.AddrFrom16(addr).Unmap()
	for _, p := range pools {
		if p.Prefix.Contains(a) {
			return true
		}
	}
	return false
}

// parkReply keeps h in the ring, evicting the oldest parked reply.
func (r *relay) parkReply(h *capturedHdr, now time.Time) {
	slot := &r.park[r.next]
	if slot.h.n != 0 {
		if i, ok := r.parkAt[slot.h.key]; ok && i == r.next {
			delete(r.parkAt, slot.h.key)
			r.a.st.parkedExpired.Add(1)
		}
	}
	*slot = parkedReply{h: *h, at: now}
	r.parkAt[h.key] = r.next
	r.next = (r.next + 1) % len(r.park)
	r.a.st.parked.Add(1)
}

// maxBatchBytes is the size at which a peer's batch is sent without
// waiting for its deadline: about a full frame of header-only replies,
// so that a daemon's write queue (PeerQueue batches) stays bounded in
// bytes as it was before replies carried a payload prefix.
const maxBatchBytes = 128 << 10

// deliver adds h, cut at p's reply prefix, to p's batch, flushing the
// batch first if it is full, and after if it reached maxBatchBytes. A new
// batch is due FlushDelay after its first reply.
func (r *relay) deliver(p *agentPeer, h *capturedHdr, now time.Time) {
	if p.batch == nil {
		p.batch = batchPool.Get().(*wire.ReplyBatch)
		p.due = now.Add(r.a.cfg.FlushDelay)
	}
	rep := h.cut(p.prefix)
	if !p.batch.Add(h.ts, rep) {
		if !p.batch.Full() {
			r.a.st.bad.Add(1)
			return
		}
		r.flush(p)
		p.batch = batchPool.Get().(*wire.ReplyBatch)
		p.due = now.Add(r.a.cfg.FlushDelay)
		p.batch.Add(h.ts, rep)
	}
	r.a.st.relayed.Add(1)
	if p.batch.Size() >= maxBatchBytes {
		r.flush(p)
	}
}

// flushDue flushes every batch past its deadline, or every batch if all
// is true, and arms the timer for the earliest remaining one.
func (r *relay) flushDue(now time.Time, all bool) {
	var earliest time.Time
	for p := range r.peers {
		if p.batch == nil {
			continue
		}
		if all || !now.Before(p.due) {
			r.flush(p)
			continue
		}
		if earliest.IsZero() || p.due.Before(earliest) {
			earliest = p.due
		}
	}
	if !earliest.IsZero() && (r.armed.IsZero() || earliest.Before(r.armed)) {
		r.timer.Reset(earliest.Sub(now))
		r.armed = earliest
	}
}

// flush hands p's batch to its writer; if the writer's queue is full the
// batch is dropped, counted: the relay never waits for a daemon.
func (r *relay) flush(p *agentPeer) {
	b := p.batch
	p.batch = nil
	if b == nil || b.Len() == 0 {
		if b != nil {
			recycle(b)
		}
		return
	}
	select {
	case p.out <- outFrame{batch: b}:
	default:
		r.a.st.droppedPeer.Add(uint64(b.Len()))
		recycle(b)
	}
}

func (r *relay) onOp(op flowOp, now time.Time) {
	switch op.kind {
	case opPeerUp:
		r.addPeer(op.peer)
	case opPeerDown:
		r.dropPeer(op.peer)
	case opRegister:
		r.register(op.peer, op.flows, now)
	case opDeregister:
		r.deregister(op.peer, op.flows)
	}
}

// addPeer takes a new peer and its pools, warning when they overlap
// another daemon's: forged flows of the two could then collide.
func (r *relay) addPeer(p *agentPeer) {
	for q := range r.peers {
		if a, b, ok := overlap(p.pools, q.pools); ok {
			r.a.log.Warn("copy daemons announce overlapping client pools: their forged flows may collide; give them disjoint pools or distinct pool slots",
				"peer", p.addr, "name", p.name, "pool", a.String(), "other", q.addr, "other_name", q.name, "other_pool", b.String())
		}
	}
	r.peers[p] = struct{}{}
	r.pools = append(r.pools, p.pools...)
	if len(p.h2) > 0 {
		for _, port := range p.h2 {
			r.h2Ports[port]++
		}
		r.a.h2.setPorts(r.h2Ports)
	}
	r.a.st.peers.Add(1) // here, so that a daemon counted is one whose pools the relay knows
}

// overlap returns a pool of as and one of bs that may forge the same
// address: overlapping prefixes, unless they are the same prefix split
// into the same number of slots with different slots.
func overlap(as, bs []wire.Pool) (wire.Pool, wire.Pool, bool) {
	for _, a := range as {
		for _, b := range bs {
			if !a.Prefix.Overlaps(b.Prefix) {
				continue
			}
			if a.Prefix == b.Prefix && a.Slots == b.Slots && a.Slots > 1 && a.Slot != b.Slot {
				continue
			}
			return a, b, true
		}
	}
	return wire.Pool{}, wire.Pool{}, false
}

// register makes p the owner of flows (copier → shadow direction, so keyed
// reversed) and hands it any reply parked for them. A flow outside p's
// pools, whose forged end is this host's, or held by another daemon, is
// refused; so is one past the
// table's or p's bound. A daemon reconnecting (its name and address) takes
// back its flows from a connection the agent has not yet seen die.
func (r *relay) register(p *agentPeer, flows []rewrite.Tuple, now time.Time) {
	if _, live := r.peers[p]; !live {
		return
	}
	st := &r.a.st
	for _, f := range flows {
		key := f.Reverse()
		if !inPools(p.pools, f.Src) {
			st.flowsOutsidePool.Add(1)
			continue
		}
		if r.isLocal(f.Src, now) {
			st.flowsLocal.Add(1)
			continue
		}
		if e := r.owners[key]; e != nil {
			switch {
			case e.peer == p:
				e.seen = r.clock(now)
				continue
			case e.peer.name != p.name || e.peer.remote != p.remote:
				st.flowsConflict.Add(1)
				continue
			}
			r.remove(e)
		}
		if len(p.flows) >= r.a.cfg.MaxPeerFlows || len(r.owners) >= r.a.cfg.MaxFlows {
			st.flowsRejected.Add(1)
			continue
		}
		e := &flowEntry{key: key, peer: p, seen: r.clock(now), idx: len(r.entries), h2: p.namesH2(key.SrcPort)}
		if e.h2 {
			r.a.h2.add(key)
		}
		r.entries = append(r.entries, e)
		r.owners[key] = e
		p.flows[key] = e
		st.flows.Add(1)
		r.claimParked(p, key, now)
	}
}

// claimParked delivers the reply parked for key, if any and still fresh.
func (r *relay) claimParked(p *agentPeer, key rewrite.Tuple, now time.Time) {
	i, ok := r.parkAt[key]
	if !ok {
		return
	}
	delete(r.parkAt, key)
	slot := &r.park[i]
	if now.Sub(slot.at) > r.a.cfg.ParkTime {
		r.a.st.parkedExpired.Add(1)
	} else {
		r.a.st.parkedDelivered.Add(1)
		r.deliver(p, &slot.h, now)
	}
	slot.h.n = 0
}

// deregister removes those of flows that p owns.
func (r *relay) deregister(p *agentPeer, flows []rewrite.Tuple) {
	for _, f := range flows {
		if e := r.owners[f.Reverse()]; e != nil && e.peer == p {
			r.remove(e)
		}
	}
}

// remove forgets one flow.
func (r *relay) remove(e *flowEntry) {
	delete(r.owners, e.key)
	delete(e.peer.flows, e.key)
	if e.h2 {
		r.a.h2.remove(e.key)
	}
	last := len(r.entries) - 1
	moved := r.entries[last]
	r.entries[e.idx] = moved
	moved.idx = e.idx
	r.entries[last] = nil
	r.entries = r.entries[:last]
	r.a.st.flows.Add(-1)
}

// sweep expires, a batch at a time, flows that went without a reply or a
// registration for longer than their daemon's lease: a copier whose
// deregistration never came does not leak them for good.
func (r *relay) sweep(now time.Time) {
	t := r.clock(now)
	for range min(sweepBatch, len(r.entries)) {
		if r.cursor >= len(r.entries) {
			r.cursor = 0
		}
		e := r.entries[r.cursor]
		if t-e.seen > e.peer.lease {
			r.remove(e) // the last entry moved into the cursor's place: look at it next
			r.a.st.flowsExpired.Add(1)
			continue
		}
		r.cursor++
	}
}

// dropPeer forgets a peer that went away: its flows, its pools and its
// unsent batch.
func (r *relay) dropPeer(p *agentPeer) {
	if _, ok := r.peers[p]; !ok {
		return
	}
	delete(r.peers, p)
	r.a.st.peers.Add(-1)
	if len(p.h2) > 0 {
		for _, port := range p.h2 {
			if r.h2Ports[port]--; r.h2Ports[port] <= 0 {
				delete(r.h2Ports, port)
			}
		}
		r.a.h2.setPorts(r.h2Ports)
	}
	for _, e := range p.flows {
		r.remove(e)
	}
	r.pools = r.pools[:0]
	for q := range r.peers {
		r.pools = append(r.pools, q.pools...)
	}
	if p.batch != nil {
		recycle(p.batch)
		p.batch = nil
	}
}
