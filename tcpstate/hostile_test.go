package tcpstate

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/rewrite"
)

// Tests of what hostile or odd input can make the copier do: a hostile
// agent's replies, clients with IP options, fast-open SYNs and port
// exhaustion, packets not addressed to prod.

func countFlags(pkts []sentPkt, flags uint8) int {
	n := 0
	for _, p := range pkts {
		if p.flags&flags == flags {
			n++
		}
	}
	return n
}

// TestLateRepliesResetAtMostEvery50ms: a session that ended answers late
// replies with RSTs (scenario 20), but a stream of them relayed in a loop
// gets one RST per lateRSTGap, the rest counted.
func TestLateRepliesResetAtMostEvery50ms(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(nil, nil)
	h.clientSeg(fRST, tISN+1, 0, "", nil)
	h.advance(vouchGrace + time.Millisecond) // prod's late answers had their time: the session ends
	h.sent()
	const replies = 1000 // one a millisecond for a second
	for i := 0; i < replies; i++ {
		h.reply(fACK, tShadowISN+1, tISN+1, 65535, 10, nil)
		h.advance(time.Millisecond)
	}
	rsts := countFlags(h.sent(), fRST)
	want := int(time.Second/lateRSTGap) + 1
	if rsts == 0 || rsts > want {
		t.Fatalf("%d RSTs for %d late replies in 1s, want 1..%d", rsts, replies, want)
	}
	if got := h.ctr.c[CtrRSTsLimited].Load(); got != uint64(replies-rsts) {
		t.Fatalf("rsts_limited = %d, want %d", got, replies-rsts)
	}
}

// TestStrayRepliesInSynSentLimited: replies that do not answer our SYN
// (scenario 6) are reset and the SYN re-sent, at most once per
// lateRSTGap, however many the agent relays.
func TestStrayRepliesInSynSentLimited(t *testing.T) {
	h := newHarness(t, nil)
	h.open(nil)
	h.sent()
	for i := 0; i < 100; i++ {
		h.reply(fACK, 777, 12345, 65535, 0, nil)
	}
	got := h.sent()
	if rsts, syns := countFlags(got, fRST), countFlags(got, fSYN); rsts != 1 || syns != 1 {
		t.Fatalf("100 stray replies at once: %d RSTs and %d SYNs, want 1 and 1", rsts, syns)
	}
	if n := h.ctr.c[CtrRSTsLimited].Load(); n != 99 {
		t.Fatalf("rsts_limited = %d, want 99", n)
	}
	h.advance(lateRSTGap)
	h.reply(fACK, 777, 12345, 65535, 0, nil)
	if rsts := countFlags(h.sent(), fRST); rsts != 1 {
		t.Fatalf("after the gap: %d RSTs, want 1", rsts)
	}
}

// TestForgedPortSearchBounded: when the client's own port is taken on
// the forged address, and so are the next ones, the search for a free
// port stops after maxPortProbes and sheds the flow, counted.
func TestForgedPortSearchBounded(t *testing.T) {
	h := newHarness(t, nil)
	addr := h.forged.Addr()
	for p := 0; p <= maxPortProbes+1; p++ {
		port := h.client.Port() + uint16(p)
		ft := rewrite.TupleOf(netip.AddrPortFrom(addr, port), tShadow)
		h.w.byForged[ft] = &session{forged: ft, heapIdx: -1}
	}
	h.clientSeg(fSYN, tISN, 0, "", nil)
	if got := h.ctr.c[CtrShedPorts].Load(); got != 1 {
		t.Fatalf("shed_no_forged_port = %d, want 1", got)
	}
	if _, ok := h.w.sessions[sessionKey{client: rewrite.TupleOf(h.client, tProd)}]; ok {
		t.Fatal("a session started without a forged port")
	}
	// One port free within the bound: taken.
	delete(h.w.byForged, rewrite.TupleOf(netip.AddrPortFrom(addr, h.client.Port()+maxPortProbes/2), tShadow))
	h.clientSeg(fSYN, tISN+7, 0, "", nil)
	if got := h.ctr.c[CtrShedPorts].Load(); got != 1 {
		t.Fatalf("a free port within the bound was not found: shed_no_forged_port = %d", got)
	}
}

// withIPOptions returns b, an IPv4 packet, with a record-route option
// and the given TTL.
func withIPOptions(b []byte, ttl uint8) []byte {
	opts := []byte{7, 7, 4, 198, 18, 0, 9, rewrite.OptNOP} // record route, one hop recorded
	out := append(append(append([]byte(nil), b[:20]...), opts...), b[20:]...)
	out[0] = 0x40 | byte((20+len(opts))/4)
	binary.BigEndian.PutUint16(out[2:], uint16(len(out)))
	out[rewrite.IPv4TTLOffset] = ttl
	ip := rewrite.IPv4(out)
	ip.SetChecksum(ip.ComputeChecksum())
	return out
}

func (h *harness) rawClient(flags uint8, seq, ack uint32, payload string, opts []byte) []byte {
	seg := rewrite.Segment{Src: h.client, Dst: tProd, Seq: seq, Ack: ack, Flags: flags,
		Window: 502, Options: opts, Payload: []byte(payload)}
	b := make([]byte, seg.Len())
	if _, err := seg.Put(b); err != nil {
		h.t.Fatal(err)
	}
	return b
}

// TestIPOptionsAndTTLNotCopied: the copy leaves with a fresh IP header:
// no source route or record route of the client's, TTL 64, whatever
// the captured packet carried.
func TestIPOptionsAndTTLNotCopied(t *testing.T) {
	h := newHarness(t, nil)
	h.capturedRaw(withIPOptions(h.rawClient(fSYN, tISN, 0, "", mssOpt(1460)), 3))
	h.accept(tISN)
	syn := expectOne(t, h.sent(), "SYN")
	if syn.ipHdrLen != rewrite.IPv4MinHeaderLen || syn.ttl != copyTTL {
		t.Fatalf("SYN: ip header %d bytes, ttl %d; want 20 and %d", syn.ipHdrLen, syn.ttl, copyTTL)
	}
	h.reply(fSYN|fACK, tShadowISN, tISN+1, 65535, 0, nil)
	h.sent()
	h.capturedRaw(withIPOptions(h.rawClient(fACK|fPSH, tISN+1, tProdISN+1, "GET / HTTP/1.1\r\n\r\n", nil), 1))
	h.prodSeg(fACK, tProdISN+1, tISN+1+18, 0)
	data := dataOf(h.sent())
	if len(data) != 1 {
		t.Fatalf("%d data packets, want 1", len(data))
	}
	if d := data[0]; d.ipHdrLen != rewrite.IPv4MinHeaderLen || d.ttl != copyTTL || !d.checksumOK || d.payload != "GET / HTTP/1.1\r\n\r\n" {
		t.Fatalf("data: ip header %d, ttl %d, checksum ok %v, payload %q", d.ipHdrLen, d.ttl, d.checksumOK, d.payload)
	}
}

// tfoCookie is a fast-open option with an 8-byte cookie.
var tfoCookie = []byte{rewrite.OptFastOpen, 10, 1, 2, 3, 4, 5, 6, 7, 8}

// TestFastOpenDataFollowsTheHandshake: a SYN with data (TCP Fast Open)
// reaches the shadow as a plain SYN without prod's cookie; the data goes
// after the shadow's handshake, once, whether prod took it with the SYN
// or the client sent it again.
func TestFastOpenDataFollowsTheHandshake(t *testing.T) {
	const req = "GET /fast HTTP/1.1\r\n\r\n"
	for _, prodTook := range []bool{true, false} {
		h := newHarness(t, nil)
		h.clientSeg(fSYN, tISN, 0, req, tfoCookie)
		if got := h.ctr.c[CtrFastOpenSYNs].Load(); got != 1 {
			t.Fatalf("client_fast_open_syns = %d", got)
		}
		synAck := uint32(tISN + 1)
		if prodTook {
			synAck += uint32(len(req))
		}
		h.prodSeg(fSYN|fACK, tProdISN, synAck, 0)
		h.clientSeg(fACK, synAck, tProdISN+1, "", nil)
		if !prodTook {
			h.clientSeg(fACK|fPSH, tISN+1, tProdISN+1, req, nil) // sent again, prod acks it
		}
		syn := expectOne(t, h.sent(), "SYN")
		if syn.payload != "" || syn.flags != fSYN {
			t.Fatalf("prodTook=%v: SYN with %q, flags %#x", prodTook, syn.payload, syn.flags)
		}
		h.reply(fSYN|fACK, tShadowISN, tISN+1, 65535, 0, nil)
		data := dataOf(h.sent())
		if len(data) != 1 || data[0].payload != req || data[0].seq != tISN+1 || !data[0].checksumOK {
			t.Fatalf("prodTook=%v: data after the handshake %+v, want %q once at %d", prodTook, data, req, tISN+1)
		}
		h.reply(fACK, tShadowISN+1, tISN+1+uint32(len(req)), 65535, 0, nil)
		if h.w.buffered != 0 {
			t.Fatalf("prodTook=%v: %d bytes still buffered after the shadow acked everything", prodTook, h.w.buffered)
		}
	}
}

// TestFastOpenSYNLeavesWithoutCookie: prod's fast-open cookie is not
// the shadow's: its bytes leave as NOPs, the other options kept.
func TestFastOpenSYNLeavesWithoutCookie(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.TrustInbound = true })
	out := &capturing{}
	h.w.out = out
	h.clientSeg(fSYN, tISN, 0, "x", append(mssOpt(1460), tfoCookie...))
	if len(out.pkts) != 1 {
		t.Fatalf("%d packets sent, want the SYN", len(out.pkts))
	}
	var p rewrite.Packet
	if err := p.Decode(out.pkts[0]); err != nil {
		t.Fatal(err)
	}
	var o rewrite.Options
	rewrite.ParseOptions(p.TCP(), &o)
	if p.PayloadLen() != 0 || !o.HasMSS() {
		t.Fatalf("SYN payload %d bytes, MSS option %v", p.PayloadLen(), o.HasMSS())
	}
	opts := p.TCP().Options()
	for i := 0; i < len(opts); {
		switch opts[i] {
		case rewrite.OptEnd:
			i = len(opts)
		case rewrite.OptNOP:
			i++
		case rewrite.OptFastOpen:
			t.Fatal("the SYN to the shadow carries prod's fast-open cookie")
		default:
			i += max(int(opts[i+1]), 2)
		}
	}
}

// capturing keeps raw copies of what is sent.
type capturing struct{ pkts [][]byte }

func (c *capturing) Send(b []byte) error {
	c.pkts = append(c.pkts, append([]byte(nil), b...))
	return nil
}

// batching is a Sender that queues, and whose Flush refuses the last
// refuse packets, as sendmmsg does with a full socket buffer.
type batching struct {
	queued, refuse, sent int
}

func (b *batching) Send([]byte) error { b.queued++; return nil }
func (b *batching) Flush() (int, error) {
	failed := min(b.refuse, b.queued)
	b.sent += b.queued - failed
	b.queued = 0
	return failed, nil
}

// TestPacketsSentExcludesRefused: packets a batching Sender queued but
// the kernel refused at Flush count as send errors, not as sent.
func TestPacketsSentExcludesRefused(t *testing.T) {
	h := newHarness(t, nil)
	b := &batching{refuse: 1}
	h.w.out, h.w.flusher = b, b
	h.clientSeg(fSYN, tISN, 0, "", nil)
	h.accept(tISN)
	h.reply(fSYN|fACK, tShadowISN, tISN+1, 65535, 0, nil)
	h.request(tISN+1, 0, "hello")
	sent, errs := h.ctr.c[CtrPacketsSent].Load(), h.ctr.c[CtrSendErrors].Load()
	if sent != uint64(b.sent) || errs == 0 || sent+errs == 0 {
		t.Fatalf("packets_sent %d, send_errors %d; the sender took %d", sent, errs, b.sent)
	}
}

// TestShutdownPacesResets: at shutdown the RSTs of many sessions leave
// in bursts, flushed, with pauses between them, and all of them leave.
func TestShutdownPacesResets(t *testing.T) {
	h := newHarness(t, nil)
	b := &batching{}
	h.w.out, h.w.flusher = b, b
	var pauses []time.Duration
	h.w.sleep = func(d time.Duration) { pauses = append(pauses, d) }
	const n = 300
	for i := 0; i < n; i++ {
		h.client = netip.AddrPortFrom(tClient.Addr(), uint16(20000+i))
		h.forged = netip.AddrPortFrom(h.forged.Addr(), h.client.Port())
		h.open(nil)
		h.reply(fSYN|fACK, tShadowISN, tISN+1, 65535, 0, nil)
	}
	before := b.sent
	h.w.Shutdown(h.now)
	if got := b.sent - before; got != n {
		t.Fatalf("%d RSTs left at shutdown, want %d", got, n)
	}
	if len(pauses) != n/shutdownBurst {
		t.Fatalf("%d pauses, want %d", len(pauses), n/shutdownBurst)
	}
	for _, d := range pauses {
		if d <= 0 || d > shutdownGap {
			t.Fatalf("pause %v, want within (0, %v]", d, shutdownGap)
		}
	}
	if h.w.Sessions() != 0 || h.w.buffered != 0 {
		t.Fatalf("after shutdown: %d sessions, %d bytes", h.w.Sessions(), h.w.buffered)
	}
}

// TestForgottenSessionReleasesItsSYN: a SYN prod never answered, replaced
// by the client's next attempt (a new ISN), gives its buffer back.
func TestForgottenSessionReleasesItsSYN(t *testing.T) {
	h := newHarness(t, nil)
	h.clientSeg(fSYN, tISN, 0, "", nil)
	one := h.w.buffered
	if one == 0 {
		t.Fatal("the SYN is not accounted")
	}
	h.clientSeg(fSYN, tISN+99, 0, "", nil)
	if h.w.buffered != one {
		t.Fatalf("after a second attempt %d bytes buffered, want %d", h.w.buffered, one)
	}
	h.advance(h.cfg.HandshakeTimeout + time.Second)
	if h.w.buffered != 0 || h.w.Sessions() != 0 {
		t.Fatalf("after prod's handshake timeout: %d bytes, %d sessions", h.w.buffered, h.w.Sessions())
	}
}

// engineFor builds an engine with one recording worker and its own
// Input for the tests below.
func engineFor(t *testing.T, cfg Config) *Engine {
	t.Helper()
	e, err := NewEngine(cfg, []Sender{&discard{}}, &recorder{t: t}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// TestPortOnlyMapCopiesOnlyLocalTraffic: with a port-only map, packets
// to that port but another host (a promiscuous NIC, a bridge) are
// ignored, counted; prod's own packets from another host too.
func TestPortOnlyMapCopiesOnlyLocalTraffic(t *testing.T) {
	e := engineFor(t, Config{
		Maps:    []Map{{Local: netip.AddrPortFrom(netip.Addr{}, 80), Target: tShadow}},
		IsLocal: func(a netip.Addr) bool { return a == tProd.Addr() },
	})
	ts := time.Unix(1700000000, 0)
	other := netip.MustParseAddrPort("198.18.0.77:80")
	for _, dst := range []netip.AddrPort{other, tProd} {
		seg := rewrite.Segment{Src: tClient, Dst: dst, Seq: tISN, Flags: rewrite.FlagSYN, Window: 502}
		b := make([]byte, seg.Len())
		seg.Put(b)
		e.HandleCaptured(b, ts)
	}
	back := rewrite.Segment{Src: other, Dst: tClient, Seq: 1, Ack: tISN + 1, Flags: rewrite.FlagSYN | rewrite.FlagACK, Window: 502}
	b := make([]byte, back.Len())
	back.Put(b)
	e.HandleCaptured(b, ts)
	s := e.Stats()
	if s.Get(CtrIgnoredNotLocal) != 1 || len(e.loops[0].pkts) != 1 || s.Get(CtrFromProd) != 0 {
		t.Fatalf("ignored_not_local %d, queued %d, from_prod %d; want 1, 1, 0",
			s.Get(CtrIgnoredNotLocal), len(e.loops[0].pkts), s.Get(CtrFromProd))
	}
}

// TestOddIPPacketsCounted: v4-mapped IPv6 and BIG TCP super-packets are
// counted by kind, never queued.
func TestOddIPPacketsCounted(t *testing.T) {
	e := engineFor(t, Config{Maps: []Map{{Local: tProd, Target: tShadow}}})
	ts := time.Unix(1700000000, 0)
	mapped := rewrite.Segment{
		Src: netip.MustParseAddrPort("[2001:2::2]:40000"), Dst: netip.MustParseAddrPort("[2001:2::1]:80"),
		Seq: tISN, Flags: rewrite.FlagSYN, Window: 502,
	}
	b := make([]byte, mapped.Len())
	mapped.Put(b)
	copy(b[rewrite.IPv6DstAddrOffset:], netip.MustParseAddr("::ffff:198.18.0.1").AsSlice())
	e.HandleCaptured(b, ts)
	big := rewrite.Segment{Src: tClient, Dst: tProd, Seq: tISN, Flags: rewrite.FlagACK, Window: 502, Payload: make([]byte, 1000)}
	bb := make([]byte, 70000)
	big.Put(bb)
	binary.BigEndian.PutUint16(bb[rewrite.IPv4TotalLenOffset:], 0)
	e.HandleCaptured(bb, ts)
	s := e.Stats()
	if s.Get(CtrIgnoredMapped) != 1 || s.Get(CtrIgnoredBigPacket) != 1 || len(e.loops[0].pkts) != 0 {
		t.Fatalf("ignored_v4_mapped %d, ignored_big_packet %d, queued %d", s.Get(CtrIgnoredMapped), s.Get(CtrIgnoredBigPacket), len(e.loops[0].pkts))
	}
}

// TestRepliesCannotStarveCapturedPackets: with the reply queue flooded,
// one loop turn still takes every captured packet waiting, and leaves
// replies for later, counted.
func TestRepliesCannotStarveCapturedPackets(t *testing.T) {
	e := engineFor(t, Config{Maps: []Map{{Local: tProd, Target: tShadow}}, QueueLen: 1024})
	l := e.loops[0]
	reply := rewrite.Segment{Src: tShadow, Dst: tClient, Seq: 1, Ack: 2, Flags: rewrite.FlagACK, Window: 1}
	hdr := make([]byte, reply.Len())
	reply.Put(hdr)
	for i := 0; i < 1000; i++ {
		e.HandleReply(hdr)
	}
	ts := time.Unix(1700000000, 0)
	const captured = 20
	for i := 0; i < captured; i++ {
		seg := rewrite.Segment{Src: netip.AddrPortFrom(tClient.Addr(), uint16(30000+i)), Dst: tProd, Seq: tISN, Flags: rewrite.FlagSYN, Window: 502}
		b := make([]byte, seg.Len())
		seg.Put(b)
		e.HandleCaptured(b, ts)
	}
	l.drain(e)
	if len(l.pkts) != 0 {
		t.Fatalf("%d captured packets left after a turn", len(l.pkts))
	}
	if took := 1000 - len(l.replies); took > maxRepliesPerTurn {
		t.Fatalf("%d replies handled in one turn, want at most %d", took, maxRepliesPerTurn)
	}
	if l.ctr.c[CtrRepliesDeferred].Load() != 1 {
		t.Fatalf("replies_deferred = %d", l.ctr.c[CtrRepliesDeferred].Load())
	}
	l.w.Shutdown(e.now())
}

// TestFullQueueShedsAfterQueueWait: a capture finding its worker's queue
// full waits Config.QueueWait for a slot, then sheds the packet, counted,
// and leaves the queue as it was.
func TestFullQueueShedsAfterQueueWait(t *testing.T) {
	const wait = 3 * time.Millisecond
	e := engineFor(t, Config{Maps: []Map{{Local: tProd, Target: tShadow}}, Workers: 1, QueueLen: 1, QueueWait: wait})
	ts := time.Unix(1700000000, 0)
	var took time.Duration
	for i := 0; i < 2; i++ {
		seg := rewrite.Segment{Src: netip.AddrPortFrom(tClient.Addr(), uint16(30000+i)), Dst: tProd, Seq: tISN, Flags: rewrite.FlagSYN, Window: 502}
		b := make([]byte, seg.Len())
		seg.Put(b)
		start := time.Now()
		e.HandleCaptured(b, ts)
		took = time.Since(start)
	}
	if s := e.Stats(); s.Get(CtrShedQueue) != 1 || len(e.loops[0].pkts) != 1 {
		t.Fatalf("shed_queue_full %d, queued %d: want the second packet shed, the first queued", s.Get(CtrShedQueue), len(e.loops[0].pkts))
	}
	if took < wait {
		t.Errorf("the second packet was shed after %v, before the %v wait", took, wait)
	}
}
