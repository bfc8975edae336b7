package tcpstate

import (
	"errors"
	"log/slog"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/rewrite"
)

const (
	fSYN = rewrite.FlagSYN
	fACK = rewrite.FlagACK
	fFIN = rewrite.FlagFIN
	fRST = rewrite.FlagRST
	fPSH = rewrite.FlagPSH
)

// Lab-range addresses (RFC 2544 benchmarking space) used by the tests.
var (
	tClient = netip.MustParseAddrPort("198.18.0.2:40000")
	tProd   = netip.MustParseAddrPort("198.18.0.1:80")
	tShadow = netip.MustParseAddrPort("198.18.1.2:8080")
	tPool   = netip.MustParsePrefix("198.19.0.0/16")
)

const (
	tISN     = 1000
	tProdISN = 5000000
)

// tShadowISN is a variable so that arithmetic on it wraps past 2^32 during
// the tests, as real sequence numbers do.
var tShadowISN uint32 = 0xfffffff0

// event is what the fakes record, in order.
type event struct {
	kind string // "register", "deregister", "send"
	flow rewrite.Tuple
	pkt  sentPkt
}

type sentPkt struct {
	src, dst   netip.AddrPort
	flags      uint8
	seq, ack   Seq
	win        uint16
	payload    string
	opts       rewrite.Options
	checksumOK bool
	ttl        uint8 // TTL or hop limit
	ipHdrLen   int
}

type recorder struct {
	t      testing.TB
	events []event
	fail   error
}

func (r *recorder) Send(b []byte) error {
	if r.fail != nil {
		return r.fail
	}
	var p rewrite.Packet
	if err := p.Decode(b); err != nil {
		r.t.Fatalf("engine sent an undecodable packet: %v", err)
	}
	tcp := p.TCP()
	sp := sentPkt{
		src:   netip.AddrPortFrom(p.SrcAddr(), tcp.SrcPort()),
		dst:   netip.AddrPortFrom(p.DstAddr(), tcp.DstPort()),
		flags: tcp.Flags(), seq: Seq(tcp.Seq()), ack: Seq(tcp.Ack()),
		win: tcp.Window(), payload: string(p.Payload()), checksumOK: p.ChecksumValid(),
		ipHdrLen: p.IPHeaderLen(),
	}
	if p.IsV6() {
		sp.ttl = rewrite.IPv6(b).HopLimit()
	} else {
		sp.ttl = rewrite.IPv4(b).TTL()
		if rewrite.IPv4(b).ComputeChecksum() != rewrite.IPv4(b).Checksum() {
			sp.checksumOK = false
		}
	}
	rewrite.ParseOptions(tcp, &sp.opts)
	r.events = append(r.events, event{kind: "send", pkt: sp})
	return nil
}

func (r *recorder) Register(f rewrite.Tuple) {
	r.events = append(r.events, event{kind: "register", flow: f})
}

func (r *recorder) Deregister(f rewrite.Tuple) {
	r.events = append(r.events, event{kind: "deregister", flow: f})
}

// harness drives one Worker with constructed packets and a fake clock.
type harness struct {
	t   testing.TB
	cfg Config
	w   *Worker
	rec *recorder
	ctr counters
	now int64 // monotonic fake clock
	// wall is the capture clock; it advances with now.
	wall    int64
	client  netip.AddrPort
	forged  netip.AddrPort
	tsClock uint32
	// route is the map and copy the packets are fed as.
	route route
	// prodAcks makes prod acknowledge every client segment as soon as it
	// is captured, as a healthy prod does: tests of what prod accepts
	// turn it off.
	prodAcks bool
}

func newHarness(t testing.TB, mutate func(*Config)) *harness {
	t.Helper()
	pool, err := rewrite.NewPool([]netip.Prefix{tPool}, 0)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, rec: &recorder{t: t}, client: tClient, now: 1e9, wall: 1_700_000_000e9, prodAcks: true}
	h.cfg = Config{
		Maps: []Map{{Local: tProd, Target: tShadow}},
		Pool: pool,
	}
	if mutate != nil {
		mutate(&h.cfg)
	}
	h.cfg.Defaults()
	if err := h.cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	h.w = newWorker(&h.cfg, 0, 1, h.rec, h.rec, &h.ctr, &shared{log: slog.New(slog.DiscardHandler), hinted: make([]atomic.Bool, len(h.cfg.Maps))})
	h.forged = netip.AddrPortFrom(pool.Map(tClient.Addr()), tClient.Port())
	return h
}

// advance moves both clocks and runs timers and output.
func (h *harness) advance(d time.Duration) {
	h.now += int64(d)
	h.wall += int64(d)
	h.w.Tick(h.now)
	h.w.Flush(h.now)
}

// clientSeg feeds a captured client packet (client → prod).
func (h *harness) clientSeg(flags uint8, seq, ack uint32, payload string, opts []byte) {
	h.t.Helper()
	seg := rewrite.Segment{
		Src: h.client, Dst: tProd, Seq: seq, Ack: ack, Flags: flags,
		Window: 502, Options: opts, Payload: []byte(payload),
	}
	pb := getBuf(seg.Len())
	n, err := seg.Put(pb.b)
	if err != nil {
		h.t.Fatal(err)
	}
	pb.b = pb.b[:n]
	// Captured packets from virtual links often carry partial checksums.
	rewrite.TCP(pb.b[20:]).SetChecksum(0x1234)
	var p rewrite.Packet
	if err := p.Decode(pb.b); err != nil {
		h.t.Fatal(err)
	}
	h.w.handleCaptured(pb, p.Layout(), h.wall, h.route, h.now)
	h.w.Flush(h.now)
	if h.prodAcks && flags&(rewrite.FlagSYN|rewrite.FlagRST) == 0 && (len(payload) > 0 || flags&rewrite.FlagFIN != 0) {
		end := seq + uint32(len(payload))
		if flags&rewrite.FlagFIN != 0 {
			end++
		}
		h.prodSeg(rewrite.FlagACK, ack, end, 0) // prod accepts what the client sent
	}
}

// capturedRaw feeds a captured client packet built by the caller (IP
// options, extension headers, odd TTLs).
func (h *harness) capturedRaw(b []byte) {
	h.t.Helper()
	pb := getBuf(len(b))
	if pb == nil {
		h.t.Fatalf("no buffer for %d bytes", len(b))
	}
	copy(pb.b, b)
	var p rewrite.Packet
	if err := p.Decode(pb.b); err != nil {
		h.t.Fatal(err)
	}
	h.w.handleCaptured(pb, p.Layout(), h.wall, h.route, h.now)
	h.w.Flush(h.now)
}

// reply feeds a relayed shadow reply (shadow → forged client) carrying
// plen bytes of payload, of which only the headers are relayed.
func (h *harness) reply(flags uint8, seq, ack uint32, win uint16, plen int, opts []byte) {
	h.t.Helper()
	h.replyTo(h.forged, flags, seq, ack, win, plen, opts)
}

func (h *harness) replyTo(to netip.AddrPort, flags uint8, seq, ack uint32, win uint16, plen int, opts []byte) {
	h.t.Helper()
	seg := rewrite.Segment{
		Src: tShadow, Dst: to, Seq: seq, Ack: ack, Flags: flags,
		Window: win, Options: opts, Payload: make([]byte, plen),
	}
	buf := make([]byte, seg.Len())
	if _, err := seg.Put(buf); err != nil {
		h.t.Fatal(err)
	}
	var p rewrite.Packet
	if err := p.Decode(buf); err != nil {
		h.t.Fatal(err)
	}
	hdr := p.Headers()
	var hp rewrite.Packet
	if err := hp.DecodeHeader(hdr); err != nil {
		h.t.Fatal(err)
	}
	h.w.handleReply(hdr, hp.Layout(), h.now)
	h.w.Flush(h.now)
}

// sent returns and forgets the packets sent since the last call.
func (h *harness) sent() []sentPkt {
	var out []sentPkt
	for _, e := range h.rec.events {
		if e.kind == "send" {
			out = append(out, e.pkt)
		}
	}
	h.rec.events = h.rec.events[:0]
	return out
}

// prodSeg feeds one of prod's packets to the client (prod → client), as
// the outbound capture sees it, with plen bytes of payload.
func (h *harness) prodSeg(flags uint8, seq, ack uint32, plen int) {
	h.t.Helper()
	h.prodPacket(flags, seq, ack, make([]byte, plen))
}

// prodPacket feeds one of prod's packets carrying payload.
func (h *harness) prodPacket(flags uint8, seq, ack uint32, payload []byte) {
	h.t.Helper()
	seg := rewrite.Segment{
		Src: tProd, Dst: h.client, Seq: seq, Ack: ack, Flags: flags,
		Window: 1000, Payload: payload,
	}
	pb := getBuf(seg.Len())
	n, err := seg.Put(pb.b)
	if err != nil {
		h.t.Fatal(err)
	}
	pb.b = pb.b[:n]
	var p rewrite.Packet
	if err := p.Decode(pb.b); err != nil {
		h.t.Fatal(err)
	}
	h.w.handleProd(pb, p.Layout(), h.wall, h.route, h.now)
	h.w.Flush(h.now)
}

// open plays a connection prod accepts: the client's SYN with options
// opts, prod's SYN-ACK, the client's ACK. Then the copier sends its SYN.
func (h *harness) open(opts []byte) {
	h.t.Helper()
	h.clientSeg(rewrite.FlagSYN, tISN, 0, "", opts)
	h.accept(tISN)
}

// accept plays prod's SYN-ACK to the client's SYN with isn, and the
// client's ACK of it.
func (h *harness) accept(isn uint32) {
	h.t.Helper()
	h.prodSeg(rewrite.FlagSYN|rewrite.FlagACK, tProdISN, isn+1, 0)
	h.clientSeg(rewrite.FlagACK, isn+1, tProdISN+1, "", nil)
}

// handshake opens a session and completes it with the shadow, with the
// client's SYN options opts and the SYN-ACK's options synAckOpts.
func (h *harness) handshake(opts, synAckOpts []byte) {
	h.t.Helper()
	h.open(opts)
	h.reply(rewrite.FlagSYN|rewrite.FlagACK, tShadowISN, tISN+1, 65535, 0, synAckOpts)
	h.rec.events = h.rec.events[:0]
}

// request sends a client request whose ACK says prod had sent
// prodAnswered bytes by then.
func (h *harness) request(seq uint32, prodAnswered uint32, body string) {
	h.t.Helper()
	h.clientSeg(fACK|fPSH, seq, tProdISN+1+prodAnswered, body, nil)
}

func (h *harness) ended(r EndReason) uint64 { return h.ctr.ended[r].Load() }

func mssOpt(mss uint16) []byte { return rewrite.AppendMSS(nil, mss) }

func expectOne(t testing.TB, got []sentPkt, what string) sentPkt {
	t.Helper()
	if len(got) != 1 {
		t.Fatalf("%s: sent %d packets, want 1: %+v", what, len(got), got)
	}
	if !got[0].checksumOK {
		t.Fatalf("%s: bad checksum", what)
	}
	return got[0]
}

type netipPrefix = netip.Prefix

var (
	netipMustPrefix = netip.MustParsePrefix
	netipAddrPort   = netip.MustParseAddrPort
	errTest         = errors.New("test send failure")
)
