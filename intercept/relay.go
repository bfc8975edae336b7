package intercept

import (
	"context"
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

// relay owns the flow table, the parked replies and the peers' batches.
// Only the relay goroutine touches it, so none of it is locked.
type relay struct {
	a      *Agent
	owners map[rewrite.Tuple]*agentPeer // key: reply direction
	peers  map[*agentPeer]struct{}
	park   []parkedReply         // ring of MaxParked; the oldest is evicted
	parkAt map[rewrite.Tuple]int // flow → its slot in park
	next   int                   // the slot the next parked reply takes
	timer  *time.Timer           // flush deadline of the earliest batch
	armed  time.Time             // when timer fires; zero: not armed
}

// relayLoop is the relay goroutine: it takes captured headers and the
// peers' flow ops, one at a time, until ctx is done; then it closes every
// peer.
func (a *Agent) relayLoop(ctx context.Context) {
	r := &relay{
		a: a, owners: make(map[rewrite.Tuple]*agentPeer), peers: make(map[*agentPeer]struct{}),
		park: make([]parkedReply, a.cfg.MaxParked), parkAt: make(map[rewrite.Tuple]int),
		timer: time.NewTimer(time.Hour),
	}
	defer r.timer.Stop()
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
		}
		// Nothing more captured and queued: send what there is now. A
		// block of replies from the capture still leaves in one batch
		// (the capture goroutine queues it whole), and a lone reply at a
		// low rate costs no timer wake-up. FlushDelay bounds the rest.
		r.flushDue(time.Now(), len(a.hdrs) == 0)
	}
}

// onHeader relays a captured header to its flow's owner, or parks it if
// it is a SYN or RST that may have beaten its registration.
func (r *relay) onHeader(h *capturedHdr, now time.Time) {
	p := r.owners[h.key]
	if p == nil {
		if !h.syn {
			r.a.st.noOwner.Add(1)
			return
		}
		r.parkReply(h, now)
		return
	}
	r.deliver(p, h, now)
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

// deliver adds h to p's batch, flushing the batch first if it is full. A
// new batch is due FlushDelay after its first header.
func (r *relay) deliver(p *agentPeer, h *capturedHdr, now time.Time) {
	if p.batch == nil {
		p.batch = batchPool.Get().(*wire.ReplyBatch)
		p.due = now.Add(r.a.cfg.FlushDelay)
	}
	if !p.batch.Add(h.ts, h.hdr[:h.n]) {
		if !p.batch.Full() {
			r.a.st.bad.Add(1)
			return
		}
		r.flush(p)
		p.batch = batchPool.Get().(*wire.ReplyBatch)
		p.due = now.Add(r.a.cfg.FlushDelay)
		p.batch.Add(h.ts, h.hdr[:h.n])
	}
	r.a.st.relayed.Add(1)
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
		r.peers[op.peer] = struct{}{}
	case opPeerDown:
		r.dropPeer(op.peer)
	case opRegister:
		r.register(op.peer, op.flows, now)
	case opDeregister:
		r.deregister(op.peer, op.flows)
	}
}

// register makes p the owner of flows (copier → shadow direction, so keyed
// reversed) and hands it any reply parked for them. The newest
// registration of a flow wins.
func (r *relay) register(p *agentPeer, flows []rewrite.Tuple, now time.Time) {
	if _, live := r.peers[p]; !live {
		return
	}
	for _, f := range flows {
		key := f.Reverse()
		if old, ok := r.owners[key]; ok {
			if old == p {
				continue
			}
			delete(old.flows, key)
		} else if len(r.owners) >= r.a.cfg.MaxFlows {
			r.a.st.flowsRejected.Add(1)
			continue
		} else {
			r.a.st.flows.Add(1)
		}
		r.owners[key] = p
		p.flows[key] = struct{}{}
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
		key := f.Reverse()
		if r.owners[key] == p {
			delete(r.owners, key)
			delete(p.flows, key)
			r.a.st.flows.Add(-1)
		}
	}
}

// dropPeer forgets a peer that went away: its flows and its unsent batch.
func (r *relay) dropPeer(p *agentPeer) {
	if _, ok := r.peers[p]; !ok {
		return
	}
	delete(r.peers, p)
	for key := range p.flows {
		if r.owners[key] == p {
			delete(r.owners, key)
			r.a.st.flows.Add(-1)
		}
	}
	p.flows = nil
	if p.batch != nil {
		recycle(p.batch)
		p.batch = nil
	}
}
