package intercept

import (
	"sync"
	"sync/atomic"

	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/internal/compare"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// H2 records (wire's doc): for a flow whose shadow port its copy daemon
// named in Hello.H2Ports, the agent walks the HTTP/2 frames of the
// shadow's whole reply payloads and relays, in place of the payload
// prefix, one compact frame per HEADERS or RST_STREAM frame that ends in
// the reply (compare.H2StatusFrame). A multiplexed connection's answers
// interleave and coalesce into packets whose first bytes say nothing of
// the streams after them, which is why a prefix will not do.
//
// The walk runs on the capture goroutine, the one holding the whole
// packet: nothing of it is kept but a walker's few bytes per flow. The
// relay goroutine, which owns the flow table, adds a walker when it
// registers such a flow and removes it with the flow, so walkers are
// bounded by the flow table; the mutex between the two is taken per
// packet only for replies from a port some daemon named (h2Ports), and
// held for one walk.
//
// A flow's reply must begin like HTTP/2 (a server's first frame is
// SETTINGS, RFC 9113 §3.4); one that does not (an HTTP/1 answer on that
// port) is relayed as any, with the prefix asked for. A walk that lost
// sync (a gap: the capture dropped a segment) relays, in each of that
// flow's replies from then on, the lost record (compare.H2LostRecord)
// alone: the copier stops pairing that connection's streams rather than
// pair them wrong, or count them unanswered.

// h2Flow is one walked flow's state; the capture goroutine's, under
// h2Table.mu.
type h2Flow struct {
	w       compare.H2Walker
	start   uint32 // the sequence number of the reply's first byte, from its SYN-ACK
	dropped uint32 // the walker's Dropped already counted
	mode    uint8
}

// h2Flow modes.
const (
	h2Undecided uint8 = iota // no payload yet
	h2Walking                // began with SETTINGS: records relayed
	h2NotH2                  // began otherwise: relayed as any reply
	h2Lost                   // the walk lost sync: nothing relayed
)

// h2MaxEvents bounds the frames one reply's walk reports: more than its
// records could hold (MaxReplyPrefix over the smallest record, 10 bytes).
const h2MaxEvents = wire.MaxReplyPrefix/10 + 1

// h2Table holds the walked flows, by reply direction.
type h2Table struct {
	ports [1 << 16 / 64]atomic.Uint64 // shadow ports some live daemon named
	mu    sync.Mutex
	flows map[rewrite.Tuple]*h2Flow
	ev    [h2MaxEvents]compare.H2Event // the capture goroutine's scratch
	cut   atomic.Bool                  // a walked reply was cut by the capture: logged once
}

func (t *h2Table) named(port uint16) bool {
	return t.ports[port/64].Load()&(1<<(port%64)) != 0
}

// setPorts makes ports the named set: the relay's, on a daemon's coming
// and going.
func (t *h2Table) setPorts(ports map[uint16]int) {
	var set [len(t.ports)]uint64
	for p, n := range ports {
		if n > 0 {
			set[p/64] |= 1 << (p % 64)
		}
	}
	for i := range set {
		t.ports[i].Store(set[i])
	}
}

func (t *h2Table) add(key rewrite.Tuple) {
	t.mu.Lock()
	if t.flows == nil {
		t.flows = make(map[rewrite.Tuple]*h2Flow)
	}
	t.flows[key] = new(h2Flow)
	t.mu.Unlock()
}

func (t *h2Table) remove(key rewrite.Tuple) {
	t.mu.Lock()
	delete(t.flows, key)
	t.mu.Unlock()
}

// h2Walk walks captured packet pkt, whose relayed form h already holds,
// if its flow is walked; it then replaces h's payload prefix with the
// reply's H2 records. The capture goroutine's; no allocation.
func (a *Agent) h2Walk(pkt []byte, h *capturedHdr) {
	t := &a.h2
	if !t.named(h.key.SrcPort) {
		return
	}
	var p rewrite.Packet
	if p.DecodeHeader(pkt) != nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	f := t.flows[h.key]
	if f == nil {
		return
	}
	tcp := p.TCP()
	if tcp.Flags()&rewrite.FlagSYN != 0 && (f.mode == h2Undecided || f.start != tcp.Seq()+1) {
		// A connection's first reply, or a new connection on the
		// flow's tuple: walked from its first byte.
		*f = h2Flow{start: tcp.Seq() + 1}
		f.w.Start(f.start)
	}
	payload := p.Payload()
	if len(payload) == 0 || f.mode == h2NotH2 {
		return
	}
	if f.mode == h2Undecided {
		if !h2Begins(payload) {
			f.mode = h2NotH2
			a.st.h2NotH2.Add(1)
			return
		}
		f.mode = h2Walking
	}
	h.recs, h.n = true, uint16(h.hl) // the records replace the prefix
	if f.mode == h2Lost {
		h.n += uint16(copy(h.hdr[h.n:], compare.H2LostRecord))
		return
	}
	a.st.h2Walked.Add(1)
	k := f.w.Walk(tcp.Seq(), payload, t.ev[:])
	if len(payload) < p.PayloadLen() {
		f.w.Lose() // cut by the snap length: where the next frame begins is unknown
		if !t.cut.Swap(true) {
			a.log.Warn("an HTTP/2 reply was cut by the capture's snap length: its connection's answers are not compared (h2_lost); capture whole replies (intercept --snaplen 262144)",
				"captured", len(payload), "payload", p.PayloadLen())
		}
	}
	room := wire.MaxReplyPrefix
	if f.w.Lost() {
		f.mode = h2Lost
		a.st.h2Lost.Add(1)
		room -= len(compare.H2LostRecord)
	}
	var rec [16]byte
	n := int(h.n)
	for i := range k {
		e := &t.ev[i]
		status := compare.H2StatusReset
		if e.Kind == compare.H2EventHeaders {
			status = compare.H2Status(e.HeaderBlock())
		}
		b := compare.H2StatusFrame(&rec, e.Stream, status)
		if n+len(b) > int(h.hl)+room {
			a.st.h2Dropped.Add(uint64(k - i))
			break
		}
		n += copy(h.hdr[n:], b)
		a.st.h2Records.Add(1)
	}
	if d := f.w.Dropped(); d != f.dropped {
		a.st.h2Dropped.Add(uint64(d - f.dropped))
		f.dropped = d
	}
	if f.mode == h2Lost {
		n += copy(h.hdr[n:], compare.H2LostRecord)
	}
	h.n = uint16(n)
}

// h2Begins reports whether a server's first payload bytes begin like
// HTTP/2: a SETTINGS frame (type 4) on stream 0, not an ACK, of a length
// SETTINGS can have (a multiple of 6, RFC 9113 §6.5), as far as they go.
func h2Begins(b []byte) bool {
	var hdr [9]byte
	n := copy(hdr[:], b)
	if n < 4 {
		return n > 0 && hdr[0] == 0 && (n < 2 || hdr[1] == 0) && (n < 3 || hdr[2]%6 == 0)
	}
	if hdr[0] != 0 || hdr[1] != 0 || hdr[2]%6 != 0 || hdr[3] != 4 {
		return false
	}
	return n < 5 || hdr[4]&1 == 0
}

// namesH2 reports whether p asked for H2 records from shadow port port.
func (p *agentPeer) namesH2(port uint16) bool {
	for _, q := range p.h2 {
		if q == port {
			return true
		}
	}
	return false
}
