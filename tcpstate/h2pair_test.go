package tcpstate

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/tcpshadow/tcpshadow/internal/compare"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

func h2f(dst []byte, typ, flags byte, stream uint32, p []byte) []byte {
	dst = append(dst, byte(len(p)>>16), byte(len(p)>>8), byte(len(p)), typ, flags)
	dst = binary.BigEndian.AppendUint32(dst, stream)
	return append(dst, p...)
}

// hpackBlock encodes fields with an encoder of its own (so every
// request is literal, as a fresh connection's first would be).
func hpackBlock(fields ...string) []byte {
	var b bytes.Buffer
	e := hpack.NewEncoder(&b)
	for i := 0; i < len(fields); i += 2 {
		_ = e.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	return b.Bytes()
}

func h2Get(stream uint32, path string) []byte {
	return h2f(nil, 1, 0x5, stream, hpackBlock(":method", "GET", ":scheme", "http", ":path", path, ":authority", "x"))
}

// h2Harness compares its map as HTTP/2.
func h2Harness(t *testing.T) *harness {
	h := newHarness(t, func(c *Config) {
		c.ComparePrefix = 64
		c.CompareProtocols = []compare.Protocol{compare.HTTP2}
	})
	h.w.rec = compare.NewRecorder(64)
	return h
}

// replyRecords relays one of the shadow's segments of plen payload bytes
// as the agent does for an HTTP/2 port: its headers, then records.
func (h *harness) replyRecords(seq, ack uint32, plen int, recs []byte) {
	h.t.Helper()
	seg := rewrite.Segment{Src: tShadow, Dst: h.forged, Seq: seq, Ack: ack, Flags: fACK | fPSH, Window: 65535, Payload: make([]byte, plen)}
	buf := make([]byte, seg.Len())
	if _, err := seg.Put(buf); err != nil {
		h.t.Fatal(err)
	}
	var p rewrite.Packet
	if err := p.Decode(buf); err != nil {
		h.t.Fatal(err)
	}
	raw := append(bytes.Clone(p.Headers()), recs...)
	var hp rewrite.Packet
	if err := hp.DecodeHeader(raw); err != nil {
		h.t.Fatal(err)
	}
	h.w.handleReply(raw, hp.Layout(), h.now)
	h.w.Flush(h.now)
}

func recs(rs ...compare.H2Record) []byte {
	var out []byte
	var f [16]byte
	for _, r := range rs {
		out = append(out, compare.H2StatusFrame(&f, r.Stream, r.Status)...)
	}
	return out
}

// byStream returns the pairs by their request's stream, classified.
func byStream(t *testing.T, ps []compare.Pair) map[uint32][3]string {
	t.Helper()
	out := make(map[uint32][3]string)
	for i := range ps {
		p := &ps[i]
		req := p.Request[:p.RequestLen]
		if len(req) < 9 || req[3] != 1 {
			t.Fatalf("request %x is not a HEADERS frame", req)
		}
		id := binary.BigEndian.Uint32(req[5:9])
		out[id] = [3]string{compare.Summarize(compare.HTTP2, req),
			compare.ClassifyPair(compare.HTTP2, req, &p.Prod), compare.ClassifyPair(compare.HTTP2, req, &p.Shadow)}
	}
	return out
}

// TestScenario42HTTP2PairsByStream: on a multiplexed connection each
// stream's request pairs with prod's and the shadow's answer on that
// stream, whatever their order and the frames' layout across segments:
// requests coalesced in one segment, prod answering out of order with a
// frame split between segments, CONTINUATION frames, an interim 100, a
// stream reset; latencies per stream from its request.
func TestScenario42HTTP2PairsByStream(t *testing.T) {
	h := h2Harness(t)
	h.handshake(nil, nil)
	settings := h2f(nil, 4, 0, 0, []byte{0, 3, 0, 0, 0, 100})
	reqs := append(append([]byte(h2Preface), settings...), h2Get(1, "/a")...)
	reqs = append(reqs, h2Get(3, "/b")...)
	// Stream 5: HEADERS without END_HEADERS, then a CONTINUATION.
	blk := hpackBlock(":method", "POST", ":scheme", "http", ":path", "/c", ":authority", "x", "x-long", string(bytes.Repeat([]byte("v"), 50)))
	reqs = h2f(reqs, 1, 0x1, 5, blk[:20])
	reqs = h2f(reqs, 9, 0x4, 5, blk[20:])
	h.request(tISN+1, 0, string(reqs))
	sentAt := h.now

	h.advance(2 * time.Millisecond)
	prod := h2f(nil, 4, 0, 0, nil)
	prod = h2f(prod, 1, 0x4, 3, hpackBlock(":status", "200"))
	prod = h2f(prod, 0, 0x1, 3, []byte("bbb"))
	prod = h2f(prod, 1, 0x4, 5, hpackBlock(":status", "100"))
	split := len(prod) + 5
	prod = h2f(prod, 1, 0x0, 5, hpackBlock(":status", "201", "content-type", "text/plain")) // CONTINUATION follows
	prod = h2f(prod, 9, 0x4, 5, hpackBlock("x-more", "y"))
	h.prodData(tProdISN+1, tISN+1+uint32(len(reqs)), string(prod[:split]))
	h.advance(time.Millisecond)
	h.prodData(tProdISN+1+uint32(split), tISN+1+uint32(len(reqs)), string(prod[split:]))
	h.advance(time.Millisecond)
	prod2 := h2f(nil, 1, 0x4, 1, hpackBlock(":status", "200"))
	h.prodData(tProdISN+1+uint32(len(prod)), tISN+1+uint32(len(reqs)), string(prod2))
	if got := h.pairs(); len(got) != 0 {
		t.Fatalf("%d pairs before the shadow answered", len(got))
	}

	h.advance(6 * time.Millisecond) // the shadow: 10 ms after the requests went
	h.replyRecords(tShadowISN+1, tISN+1+uint32(len(reqs)), 100, recs(
		compare.H2Record{Stream: 1, Status: 500}, compare.H2Record{Stream: 5, Status: 100}))
	h.advance(time.Millisecond)
	h.replyRecords(tShadowISN+101, tISN+1+uint32(len(reqs)), 3, recs(
		compare.H2Record{Stream: 3, Status: compare.H2StatusReset}, compare.H2Record{Stream: 5, Status: 201}))
	got := h.pairs()
	want := map[uint32][3]string{
		1: {"GET /a", "200", "500"},
		3: {"GET /b", "200", "rst_stream"},
		5: {"POST /c", "201", "201"},
	}
	if bs := byStream(t, got); len(bs) != len(want) || bs[1] != want[1] || bs[3] != want[3] || bs[5] != want[5] {
		t.Fatalf("pairs %v, want %v", bs, want)
	}
	p1 := got[0]
	for _, p := range got {
		if binary.BigEndian.Uint32(p.Request[5:9]) == 1 {
			p1 = p
		}
	}
	if d := time.Duration(p1.Prod.FirstByte - p1.Prod.Sent); d != 4*time.Millisecond {
		t.Errorf("stream 1: prod latency %v, want 4ms", d)
	}
	if d := time.Duration(p1.Shadow.FirstByte - p1.Shadow.Sent); d != 10*time.Millisecond {
		t.Errorf("stream 1: shadow latency %v, want 10ms", d)
	}
	if p1.Shadow.Sent != sentAt {
		t.Errorf("stream 1 went to the shadow at %d, the segment at %d", p1.Shadow.Sent, sentAt)
	}
	if n := h.ctr.c[CtrComparePairs].Load(); n != 3 {
		t.Fatalf("compare_pairs = %d", n)
	}
}

// TestScenario42HTTP2Unanswered: a stream the shadow never answers goes
// as a timeout once ResponseTimeout passed (with the connection's next
// event), and one left when the shadow closes the connection as closed.
func TestScenario42HTTP2Unanswered(t *testing.T) {
	h := h2Harness(t)
	h.handshake(nil, nil)
	reqs := append(append([]byte(h2Preface), h2f(nil, 4, 0, 0, nil)...), h2Get(1, "/a")...)
	h.request(tISN+1, 0, string(reqs))
	h.reply(fACK, tShadowISN+1, tISN+1+uint32(len(reqs)), 65535, 0, nil) // taken, never answered
	h.prodData(tProdISN+1, tISN+1+uint32(len(reqs)), string(h2f(nil, 1, 4, 1, []byte{0x88})))
	h.advance(h.cfg.ResponseTimeout + time.Second)
	req2 := h2Get(3, "/b")
	h.request(tISN+1+uint32(len(reqs)), 10, string(req2))
	got := byStream(t, h.pairs())
	if got[1] != [3]string{"GET /a", "200", compare.ClassTimeout} || len(got) != 1 {
		t.Fatalf("pairs %v: want stream 1's, the shadow timing out", got)
	}
	h.advance(200 * time.Millisecond)
	h.prodData(tProdISN+11, tISN+1+uint32(len(reqs)+len(req2)), string(h2f(nil, 1, 4, 3, []byte{0x8d})))
	h.advance(h.cfg.ResponseTimeout) // the pacing waits for the shadow's answer that long at most
	h.reply(fFIN|fACK, tShadowISN+1, tISN+1+uint32(len(reqs)+len(req2)), 65535, 0, nil)
	got = byStream(t, h.pairs())
	if got[3] != [3]string{"GET /b", "404", compare.ClassClosed} || len(got) != 1 {
		t.Fatalf("pairs %v: want stream 3's, the shadow closing", got)
	}
}

// TestScenario42HTTP2LostSync: a gap in prod's capture, or the agent's
// lost record, ends the connection's comparison: pending streams are
// dropped, counted, never paired wrong.
func TestScenario42HTTP2LostSync(t *testing.T) {
	for _, side := range []string{"prod", "shadow"} {
		t.Run(side, func(t *testing.T) {
			h := h2Harness(t)
			h.handshake(nil, nil)
			reqs := append(append([]byte(h2Preface), h2f(nil, 4, 0, 0, nil)...), h2Get(1, "/a")...)
			reqs = append(reqs, h2Get(3, "/b")...)
			h.request(tISN+1, 0, string(reqs))
			ack := tISN + 1 + uint32(len(reqs))
			h.prodData(tProdISN+1, ack, string(h2f(nil, 1, 4, 1, []byte{0x88})))
			if side == "prod" {
				h.prodData(tProdISN+100, ack, string(h2f(nil, 1, 4, 3, []byte{0x88}))) // bytes 11..99 missed
			} else {
				h.prodData(tProdISN+11, ack, string(h2f(nil, 1, 4, 3, []byte{0x88})))
				h.replyRecords(tShadowISN+1, ack, 10, []byte(compare.H2LostRecord))
			}
			h.replyRecords(tShadowISN+11, ack, 20, recs(compare.H2Record{Stream: 1, Status: 200}, compare.H2Record{Stream: 3, Status: 200}))
			h.advance(time.Hour)
			if got := h.pairs(); len(got) != 0 || h.ctr.c[CtrCompareH2Lost].Load() != 1 {
				t.Fatalf("%d pairs, compare_h2_lost %d: want none paired, one lost", len(got), h.ctr.c[CtrCompareH2Lost].Load())
			}
		})
	}
}

// TestScenario42HTTP2PrefixNotRecords: a reply of an HTTP/2 map relayed
// with a payload prefix (an agent not walking the flow) is not read as
// records: counted, and the stream is not answered by it.
func TestScenario42HTTP2PrefixNotRecords(t *testing.T) {
	h := h2Harness(t)
	h.handshake(nil, nil)
	reqs := append(append([]byte(h2Preface), h2f(nil, 4, 0, 0, nil)...), h2Get(1, "/a")...)
	h.request(tISN+1, 0, string(reqs))
	ack := tISN + 1 + uint32(len(reqs))
	h.replyData(fACK|fPSH, tShadowISN+1, ack, string(h2f(h2f(nil, 4, 0, 0, nil), 1, 4, 1, []byte{0x88})))
	if got := h.pairs(); len(got) != 0 || h.ctr.c[CtrCompareH2Bad].Load() != 1 {
		t.Fatalf("%d pairs, compare_h2_bad %d", len(got), h.ctr.c[CtrCompareH2Bad].Load())
	}
}

// TestScenario42HTTP2WaitsForTheShadow: a request sent to the shadow
// waits for its answer while later requests come (the capture's clock
// and the worker's are apart: neither makes it overdue).
func TestScenario42HTTP2WaitsForTheShadow(t *testing.T) {
	h := h2Harness(t)
	h.handshake(nil, nil)
	reqs := append(append([]byte(h2Preface), h2f(nil, 4, 0, 0, nil)...), h2Get(1, "/a")...)
	h.request(tISN+1, 0, string(reqs))
	ack := tISN + 1 + uint32(len(reqs))
	h.prodData(tProdISN+1, ack, string(h2f(nil, 1, 4, 1, []byte{0x88})))
	h.advance(time.Millisecond)
	req2 := h2Get(3, "/b")
	h.request(ack, 10, string(req2))
	h.prodData(tProdISN+11, ack+uint32(len(req2)), string(h2f(nil, 1, 4, 3, []byte{0x88})))
	if got := h.pairs(); len(got) != 0 {
		t.Fatalf("%d pairs before the shadow answered: %v", len(got), byStream(t, got))
	}
	h.replyRecords(tShadowISN+1, ack, 30, recs(compare.H2Record{Stream: 1, Status: 200}))
	h.advance(time.Millisecond) // the pacing releases the second request
	h.replyRecords(tShadowISN+31, ack+uint32(len(req2)), 30, recs(compare.H2Record{Stream: 3, Status: 404}))
	got := byStream(t, h.pairs())
	if len(got) != 2 || got[1] != [3]string{"GET /a", "200", "200"} || got[3] != [3]string{"GET /b", "200", "404"} {
		t.Fatalf("pairs %v", got)
	}
}
