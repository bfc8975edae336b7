package tcpstate

import (
	"encoding/binary"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/compare"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// steadyState is an established session fed by prebuilt packets: one
// client request and one shadow answer per round, with sequence numbers
// advancing, as on a busy keep-alive connection.
type steadyState struct {
	h                       *harness
	req, prod, ans          []byte         // client request, prod's answer (cut as captured), shadow answer header
	reqLay, prodLay, ansLay rewrite.Layout // their layouts, as the engine hands them over
	round                   uint32
}

const (
	ssReqLen = 200
	ssAnsLen = 1000
)

func newSteadyState(tb testing.TB) *steadyState { return newSteadyStateWith(tb, 0, false) }

// respPayload is n bytes of RESP: a command of one bulk argument, or a
// bulk reply.
func respPayload(n int, command bool) []byte {
	head := ""
	if command {
		head = "*1\r\n"
	}
	// n = len(head) + len("$") + 3 digits + len("\r\n") + body + len("\r\n"), for the lengths used
	body := n - len(head) - 1 - 4 - 3
	return []byte(head + "$" + strconv.Itoa(body) + "\r\n" + strings.Repeat("v", body) + "\r\n")
}

// newSteadyStateWith compares responses when prefix > 0: the shadow's
// answers are relayed with that many payload bytes, and paired; with
// resp, requests and answers are Redis's, whose answers are attributed
// by their starts.
func newSteadyStateWith(tb testing.TB, prefix int, resp bool) *steadyState {
	h := newHarness(tb, func(c *Config) { c.ComparePrefix = prefix })
	if prefix > 0 {
		h.w.rec = compare.NewRecorder(64)
	}
	h.handshake(rewrite.AppendTimestamps(nil, 1, 0), rewrite.AppendTimestamps(nil, 1, 1))
	s := &steadyState{h: h}
	seg := rewrite.Segment{
		Src: h.client, Dst: tProd, Flags: fACK | fPSH, Window: 502,
		Options: rewrite.AppendTimestamps(nil, 2, 2), Payload: make([]byte, ssReqLen),
	}
	if resp {
		seg.Payload = respPayload(ssReqLen, true)
	}
	s.req = make([]byte, seg.Len())
	if _, err := seg.Put(s.req); err != nil {
		tb.Fatal(err)
	}
	var rp rewrite.Packet
	if err := rp.Decode(s.req); err != nil {
		tb.Fatal(err)
	}
	s.reqLay = rp.Layout()
	prod := rewrite.Segment{
		Src: tProd, Dst: h.client, Flags: fACK | fPSH, Window: 1000,
		Options: rewrite.AppendTimestamps(nil, 4, 2), Payload: make([]byte, ssAnsLen),
	}
	if resp {
		prod.Payload = respPayload(ssAnsLen, false)
	}
	pbuf := make([]byte, prod.Len())
	if _, err := prod.Put(pbuf); err != nil {
		tb.Fatal(err)
	}
	var pp rewrite.Packet
	if err := pp.Decode(pbuf); err != nil {
		tb.Fatal(err)
	}
	s.prod = pbuf[:len(pp.Headers())+max(ProdPrefix, prefix)]
	s.prodLay = pp.Layout()
	ans := rewrite.Segment{
		Src: tShadow, Dst: h.forged, Flags: fACK | fPSH, Window: 65535,
		Options: rewrite.AppendTimestamps(nil, 3, 3), Payload: make([]byte, ssAnsLen),
	}
	if resp {
		ans.Payload = respPayload(ssAnsLen, false)
	}
	buf := make([]byte, ans.Len())
	if _, err := ans.Put(buf); err != nil {
		tb.Fatal(err)
	}
	var p rewrite.Packet
	if err := p.Decode(buf); err != nil {
		tb.Fatal(err)
	}
	s.ans = buf[:len(p.Headers())+prefix]
	var ap rewrite.Packet
	if err := ap.DecodeHeader(s.ans); err != nil {
		tb.Fatal(err)
	}
	s.ansLay = ap.Layout()
	h.rec.events = nil
	return s
}

// step runs one request/answer round: 3 packets in (the request, prod's
// answer acknowledging it, the shadow's), 1 out (the request, carrying the
// delayed ACK of the previous answer).
func (s *steadyState) step() {
	h := s.h
	r := s.round
	s.round++
	// Request r: client seq advances by the request size, its ACK by
	// what prod answered before it.
	binary.BigEndian.PutUint32(s.req[24:], tISN+1+r*ssReqLen)
	binary.BigEndian.PutUint32(s.req[28:], tProdISN+1+r*ssAnsLen)
	pb := getBuf(len(s.req))
	copy(pb.b, s.req)
	h.now += int64(time.Millisecond)
	h.wall += int64(time.Millisecond)
	h.w.handleCaptured(pb, s.reqLay, h.wall, 0, h.now)
	h.w.Flush(h.now)
	// Prod acknowledges it and answers: the request may go.
	binary.BigEndian.PutUint32(s.prod[24:], tProdISN+1+r*ssAnsLen)
	binary.BigEndian.PutUint32(s.prod[28:], tISN+1+(r+1)*ssReqLen)
	pb = getBuf(len(s.prod))
	copy(pb.b, s.prod)
	h.w.handleProd(pb, s.prodLay, h.wall, 0, h.now)
	h.w.Flush(h.now)
	// The shadow acknowledges it and answers.
	binary.BigEndian.PutUint32(s.ans[24:], tShadowISN+1+r*ssAnsLen)
	binary.BigEndian.PutUint32(s.ans[28:], tISN+1+(r+1)*ssReqLen)
	h.w.handleReply(s.ans, s.ansLay, h.now)
	h.w.Flush(h.now)
	h.rec.events = h.rec.events[:0]
}

// TestSteadyStateZeroAllocsComparing: pairing each request with both
// answers allocates nothing per packet either, by arrival (bytes of no
// protocol) or by the starts of Redis's answers.
func TestSteadyStateZeroAllocsComparing(t *testing.T) {
	t.Run("arrival", func(t *testing.T) { testZeroAllocsComparing(t, false) })
	t.Run("redis", func(t *testing.T) { testZeroAllocsComparing(t, true) })
}

func testZeroAllocsComparing(t *testing.T, resp bool) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop buffers")
	}
	s := newSteadyStateWith(t, 64, resp)
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
		t.Fatalf("per-packet path with comparison allocates %v times per round", allocs)
	}
	if got := s.h.ctr.c[CtrComparePairs].Load() - before; got < 1000 {
		t.Fatalf("%d pairs in 1001 rounds: the test is not pairing", got)
	}
	if n := s.h.ctr.c[CtrCompareResync].Load(); n != 0 {
		t.Fatalf("compare_resync = %d: the walk lost the answers", n)
	}
	if string(p.Shadow.Head[:4]) != string(p.Prod.Head[:4]) || p.Prod.HeadLen != 64 || p.Shadow.HeadLen != 64 {
		t.Fatalf("last pair: prod head %d bytes, shadow %d", p.Prod.HeadLen, p.Shadow.HeadLen)
	}
}

// discard is a Sender that drops packets, so allocation counts measure
// the engine alone.
type discard struct{ n int }

func (d *discard) Send([]byte) error { d.n++; return nil }

func TestSteadyStateZeroAllocs(t *testing.T) {
	if raceEnabled {
		// sync.Pool drops a quarter of what is put back under the race
		// detector; make test-unit runs this test without it.
		t.Skip("the race detector makes sync.Pool drop buffers")
	}
	s := newSteadyState(t)
	out := &discard{}
	s.h.w.out = out
	for i := 0; i < 100; i++ { // warm pools, maps, queues
		s.step()
	}
	sent := out.n
	allocs := testing.AllocsPerRun(1000, s.step)
	if allocs != 0 {
		t.Fatalf("per-packet path allocates %v times per request/answer round", allocs)
	}
	// One packet per round: the request, carrying the delayed ACK of the
	// previous answer.
	if out.n-sent < 1000 {
		t.Fatalf("rounds sent %d packets, want one per round: the test is not exercising the path", out.n-sent)
	}
}

func TestEngineDispatchZeroAllocs(t *testing.T) {
	cfg := Config{Maps: []Map{{Local: tProd, Target: tShadow}}}
	e, err := NewEngine(cfg, []Sender{&discard{}, &discard{}}, &recorder{t: t}, nil)
	if err != nil {
		t.Fatal(err)
	}
	seg := rewrite.Segment{Src: tClient, Dst: tProd, Flags: fACK, Window: 502, Payload: make([]byte, 300)}
	pkt := make([]byte, seg.Len())
	if _, err := seg.Put(pkt); err != nil {
		t.Fatal(err)
	}
	ts := time.Unix(1700000000, 0)
	drain := func() {
		for _, l := range e.loops {
			for len(l.pkts) > 0 {
				(<-l.pkts).pb.free()
			}
		}
	}
	run := func() {
		e.HandleCaptured(pkt, ts)
		drain()
	}
	for i := 0; i < 100; i++ {
		run()
	}
	if allocs := testing.AllocsPerRun(1000, run); allocs != 0 {
		t.Fatalf("capture dispatch allocates %v times per packet", allocs)
	}
	if st := e.Stats(); st.Get(CtrCaptured) < 1100 {
		t.Fatalf("captured = %d: packets did not reach the engine", st.Get(CtrCaptured))
	}
}

// BenchmarkWorkerRequestAnswer: one request/answer round through the
// worker, without comparison and with it (the pairing and the hand-over
// to the comparison's ring; the comparison itself is the compare
// package's BenchmarkConsume).
func BenchmarkWorkerRequestAnswer(b *testing.B) {
	for _, prefix := range []int{0, 64} {
		name := "compare-off"
		if prefix > 0 {
			name = "compare-on"
		}
		b.Run(name, func(b *testing.B) {
			s := newSteadyStateWith(b, prefix, false)
			s.h.w.out = &discard{}
			var p compare.Pair
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				s.step()
				if prefix > 0 {
					for s.h.w.rec.Next(&p) {
					}
				}
			}
			// Each round is three packets in (request, prod's answer, the
			// shadow's) and one out.
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(3*b.N), "ns/packet")
		})
	}
}

func BenchmarkEngineDispatch(b *testing.B) {
	cfg := Config{Maps: []Map{{Local: tProd, Target: tShadow}}}
	e, err := NewEngine(cfg, []Sender{&discard{}}, &recorder{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	seg := rewrite.Segment{Src: tClient, Dst: tProd, Flags: fACK, Window: 502, Payload: make([]byte, 300)}
	pkt := make([]byte, seg.Len())
	if _, err := seg.Put(pkt); err != nil {
		b.Fatal(err)
	}
	ts := time.Unix(1700000000, 0)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		e.HandleCaptured(pkt, ts)
		(<-e.loops[0].pkts).pb.free()
	}
}
