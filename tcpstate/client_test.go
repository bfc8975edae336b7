package tcpstate

// The captured side: client data queued toward the shadow.

import (
	"strings"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/rewrite"
)

func TestScenario11CaptureGapGivesUp(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.NoPacing = true })
	h.handshake(nil, nil)
	h.request(tISN+1, 0, "aaaa")
	h.request(tISN+9, 0, "cccc") // bytes 5..8 never captured
	if got := h.sent(); len(got) != 1 {
		t.Fatalf("data after the gap was sent: %+v", got)
	}
	h.reply(fACK, tShadowISN+1, tISN+5, 65535, 0, nil)
	h.request(tISN+5, 0, "bbbb") // the hole fills: both go, in order
	got := h.sent()
	if len(got) != 2 || got[0].payload != "bbbb" || got[1].payload != "cccc" {
		t.Fatalf("after the hole filled: %+v", got)
	}
	h.request(tISN+17, 0, "eeee") // a new hole that never fills
	h.advance(h.cfg.GapTimeout + time.Millisecond)
	if h.ended(EndCaptureGap) != 1 {
		t.Fatal("capture gap not ended")
	}
}

func TestScenario12ClientRetransmissionsTrimmed(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.NoPacing = true })
	h.handshake(nil, nil)
	h.request(tISN+1, 0, "abcdef")
	h.request(tISN+1, 0, "abcdef") // exact duplicate
	h.request(tISN+4, 0, "defghi") // overlaps by 3
	got := h.sent()
	if len(got) != 2 || got[1].seq != tISN+7 || got[1].payload != "ghi" {
		t.Fatalf("want the original and the trimmed tail, got %+v", got)
	}
	if h.ctr.c[CtrClientDupData].Load() != 1 || h.ctr.c[CtrClientTrimmed].Load() != 1 {
		t.Fatal("duplicates and trims not counted")
	}
}

func TestScenario24OversizedSegmentSplit(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(mssOpt(1460), mssOpt(1000))
	body := strings.Repeat("x", 2500)
	h.request(tISN+1, 0, body)
	got := h.sent()
	if len(got) != 3 {
		t.Fatalf("2500 bytes at MSS 1000: want 3 segments, got %d", len(got))
	}
	var joined string
	next := Seq(tISN + 1)
	for _, g := range got {
		if len(g.payload) > 1000 || g.seq != next || !g.checksumOK {
			t.Fatalf("bad piece %+v", g)
		}
		joined += g.payload
		next = next.Add(len(g.payload))
	}
	if joined != body {
		t.Fatal("pieces do not rebuild the payload")
	}
}

func TestScenario25OddPacketsIgnoredAndCounted(t *testing.T) {
	h := newHarness(t, nil)
	h.clientSeg(fSYN|fFIN, tISN, 0, "", nil)
	h.clientSeg(fSYN|fACK, tISN, 1, "", nil)
	if len(h.sent()) != 0 || h.ctr.c[CtrOddPackets].Load() != 2 || h.w.Sessions() != 0 {
		t.Fatal("odd SYNs not ignored and counted")
	}

	e, err := NewEngine(Config{Maps: []Map{{Local: tProd, Target: tShadow}}}, []Sender{&discard{}}, &recorder{t: t}, nil)
	if err != nil {
		t.Fatal(err)
	}
	good := rewrite.Segment{Src: tClient, Dst: tProd, Flags: fACK, Window: 1, Payload: []byte("x")}
	pkt := make([]byte, good.Len())
	good.Put(pkt)
	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), pkt...)) }
	cases := []struct {
		name string
		pkt  []byte
		ctr  Counter
	}{
		{"udp", mutate(func(b []byte) []byte { b[9] = 17; return b }), CtrIgnoredNotTCP},
		{"fragment", mutate(func(b []byte) []byte { b[6] |= 0x20; return b }), CtrIgnoredFragment},
		{"short tcp header", mutate(func(b []byte) []byte { b[32] = 0x40; return b }), CtrIgnoredBadHeader},
		{"truncated", pkt[:30], CtrIgnoredTruncated},
		{"not ip", mutate(func(b []byte) []byte { b[0] = 0x55; return b }), CtrIgnoredNotTCP},
		{"other port", mutate(func(b []byte) []byte { b[23] = 81; return b }), CtrIgnoredNoMap},
	}
	for _, c := range cases {
		before := e.Stats()
		e.HandleCaptured(c.pkt, time.Now())
		after := e.Stats()
		if after.Get(c.ctr) != before.Get(c.ctr)+1 {
			t.Errorf("%s: counter %v not incremented", c.name, c.ctr)
		}
	}
	for _, l := range e.loops {
		if len(l.pkts) != 0 {
			t.Fatal("an odd packet reached a worker")
		}
	}
}

func TestScenario27BufferLimitCutsSession(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxSessionBytes = 3 * mtuBufSize })
	h.open(nil)                              // no SYN-ACK from the shadow: data piles up
	body := strings.Repeat("0123456789", 30) // an MTU-class buffer each
	for i := 0; i < 4; i++ {
		h.request(tISN+1+uint32(i*len(body)), 0, body)
	}
	if h.ended(EndBufferLimit) != 1 {
		t.Fatal("buffer limit not enforced")
	}
	if h.ctr.buffered.Load() != 0 {
		t.Fatalf("memory not returned: %d bytes still buffered", h.ctr.buffered.Load())
	}
}
