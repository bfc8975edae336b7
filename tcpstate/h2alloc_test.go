package tcpstate

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/compare"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// h2Steady is steadyState for a map compared as HTTP/2: each round one
// request on a new stream (a padded HEADERS frame of ssReqLen bytes),
// prod's answer (HEADERS then DATA, ssAnsLen bytes, captured whole), and
// the shadow's reply relayed as its record.
type h2Steady struct {
	steadyState
	base uint32 // client bytes before the first request: preface, SETTINGS
}

func newH2Steady(tb testing.TB) *h2Steady {
	h := newHarness(tb, func(c *Config) {
		c.ComparePrefix = 64
		c.CompareProtocols = []compare.Protocol{compare.HTTP2}
	})
	h.w.rec = compare.NewRecorder(64)
	h.handshake(nil, nil)
	open := append([]byte(h2Preface), h2f(nil, 4, 0, 0, nil)...)
	h.request(tISN+1, 0, string(open))
	h.prodData(tProdISN+1, tISN+1+uint32(len(open)), string(h2f(nil, 4, 0, 0, nil)))
	h.replyRecords(tShadowISN+1, tISN+1+uint32(len(open)), 9, nil)
	s := &h2Steady{steadyState: steadyState{h: h}, base: uint32(len(open))}
	hdrLen := rewrite.IPv4MinHeaderLen + rewrite.TCPMinHeaderLen
	blk := []byte{0x82, 0x86, 0x84} // GET http /
	req := h2f(nil, 1, 0x5|0x8, 1, append(append([]byte{byte(ssReqLen - 9 - 1 - len(blk))}, blk...), make([]byte, ssReqLen-9-1-len(blk))...))
	ans := h2f(nil, 1, 0x4, 1, []byte{0x88})
	ans = h2f(ans, 0, 0x1, 1, make([]byte, ssAnsLen-len(ans)-9))
	build := func(src, dst netip.AddrPort, payload []byte, plen int) ([]byte, rewrite.Layout) {
		seg := rewrite.Segment{Src: src, Dst: dst, Flags: fACK | fPSH, Window: 65535, Payload: make([]byte, plen)}
		b := make([]byte, seg.Len())
		if _, err := seg.Put(b); err != nil {
			tb.Fatal(err)
		}
		b = append(b[:hdrLen], payload...)
		var p rewrite.Packet
		if err := p.DecodeHeader(b); err != nil {
			tb.Fatal(err)
		}
		return b, p.Layout()
	}
	s.req, s.reqLay = build(h.client, tProd, req, len(req))
	s.prod, s.prodLay = build(tProd, h.client, ans, len(ans))
	var f [16]byte
	s.ans, s.ansLay = build(tShadow, h.forged, compare.H2StatusFrame(&f, 1, 200), ssAnsLen)
	h.rec.events = nil
	return s
}

func (s *h2Steady) step() {
	h := s.h
	r := s.round
	s.round++
	stream := 2*r + 3
	hdrLen := rewrite.IPv4MinHeaderLen + rewrite.TCPMinHeaderLen
	binary.BigEndian.PutUint32(s.req[hdrLen+5:], stream)
	binary.BigEndian.PutUint32(s.prod[hdrLen+5:], stream)
	binary.BigEndian.PutUint32(s.prod[hdrLen+10+5:], stream)
	binary.BigEndian.PutUint32(s.ans[hdrLen+5:], stream)
	reqSeq := tISN + 1 + s.base + r*ssReqLen
	prodSeq := tProdISN + 1 + 9 + r*ssAnsLen
	binary.BigEndian.PutUint32(s.req[24:], reqSeq)
	binary.BigEndian.PutUint32(s.req[28:], prodSeq)
	pb := getBuf(len(s.req))
	copy(pb.b, s.req)
	h.now += int64(time.Millisecond)
	h.wall += int64(time.Millisecond)
	h.w.handleCaptured(pb, s.reqLay, h.wall, 0, h.now)
	h.w.Flush(h.now)
	binary.BigEndian.PutUint32(s.prod[24:], prodSeq)
	binary.BigEndian.PutUint32(s.prod[28:], reqSeq+ssReqLen)
	pb = getBuf(len(s.prod))
	copy(pb.b, s.prod)
	h.w.handleProd(pb, s.prodLay, h.wall, 0, h.now)
	h.w.Flush(h.now)
	binary.BigEndian.PutUint32(s.ans[24:], tShadowISN+1+9+r*ssAnsLen)
	binary.BigEndian.PutUint32(s.ans[28:], reqSeq+ssReqLen)
	h.w.handleReply(s.ans, s.ansLay, h.now)
	h.w.Flush(h.now)
	h.rec.events = h.rec.events[:0]
}

// TestSteadyStateZeroAllocsHTTP2: pairing per stream (walking the
// client's and prod's frames, reading the shadow's records) allocates
// nothing per packet, and pairs every stream.
func TestSteadyStateZeroAllocsHTTP2(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop buffers")
	}
	s := newH2Steady(t)
	s.h.w.out = &discard{}
	var p compare.Pair
	drain := func() {
		for s.h.w.rec.Next(&p) {
		}
	}
	for i := 0; i < 100; i++ {
		s.step()
		drain()
	}
	before := s.h.ctr.c[CtrComparePairs].Load()
	allocs := testing.AllocsPerRun(1000, func() { s.step(); drain() })
	if allocs != 0 {
		t.Fatalf("per-packet path pairing HTTP/2 allocates %v times per round", allocs)
	}
	if got := s.h.ctr.c[CtrComparePairs].Load() - before; got < 1000 || s.h.ctr.c[CtrCompareH2Lost].Load() != 0 {
		t.Fatalf("%d pairs in 1001 rounds, compare_h2_lost %d", got, s.h.ctr.c[CtrCompareH2Lost].Load())
	}
	req := p.Request[:p.RequestLen]
	if c := compare.ClassifyPair(compare.HTTP2, req, &p.Shadow); c != "200" || compare.ClassifyPair(compare.HTTP2, req, &p.Prod) != "200" {
		t.Fatalf("last pair: shadow %s", c)
	}
}
