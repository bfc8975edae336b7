package tcpstate

// The reply side: handshake, ACKs, windows and options from the shadow.

import (
	"strings"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/rewrite"
)

func TestScenario6StaleReplyResetsAndRestarts(t *testing.T) {
	h := newHarness(t, nil)
	h.open(nil)
	h.sent()
	h.reply(fACK, 42, 99999, 65535, 0, nil) // from an earlier incarnation
	got := h.sent()
	if len(got) != 2 || got[0].flags != fRST || got[0].seq != 99999 || got[1].flags != fSYN {
		t.Fatalf("want RST of the stale reply then SYN again, got %+v", got)
	}
	if h.ctr.c[CtrRepliesStale].Load() != 1 {
		t.Fatal("stale reply not counted")
	}
}

func TestScenario13RetransmitWithBackoff(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.RTOMin = 100 * time.Millisecond })
	h.handshake(nil, nil)
	h.request(tISN+1, 0, "lost")
	h.sent()
	rto := h.w.sessions[sessionKey{client: rewrite.TupleOf(tClient, tProd)}].rto
	var gaps []time.Duration
	last := h.now
	for len(gaps) < 3 {
		h.advance(10 * time.Millisecond)
		if got := h.sent(); len(got) == 1 && got[0].payload == "lost" {
			gaps = append(gaps, time.Duration(h.now-last))
			last = h.now
		}
	}
	if gaps[0] < rto || gaps[1] < 2*gaps[0]-20*time.Millisecond || gaps[2] < 2*gaps[1]-20*time.Millisecond {
		t.Fatalf("retransmission gaps %v do not back off from rto %v", gaps, rto)
	}
	if h.ctr.c[CtrRetransmits].Load() != 3 {
		t.Fatalf("retransmits = %d", h.ctr.c[CtrRetransmits].Load())
	}
}

func TestScenario13FastRetransmit(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.NoPacing = true })
	h.handshake(nil, nil)
	for i := 0; i < 4; i++ {
		h.request(tISN+1+uint32(i*4), 0, "abcd")
	}
	h.sent()
	for i := 0; i < 3; i++ { // the first segment was lost
		h.reply(fACK, tShadowISN+1, tISN+1, 65535, 0, nil)
	}
	got := h.sent()
	if len(got) != 1 || got[0].seq != tISN+1 {
		t.Fatalf("want a fast retransmission of the first segment, got %+v", got)
	}
}

func TestScenario14ShadowAcksBeyondWhatWasSent(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.NoPacing = true })
	h.handshake(nil, nil)
	h.request(tISN+1, 0, "abcd")
	h.sent()
	// The shadow claims 10 bytes (a joined session's guess was off).
	h.reply(fACK, tShadowISN+1, tISN+11, 65535, 0, nil)
	h.request(tISN+5, 0, "efghij") // bytes the shadow says it has
	if got := h.sent(); len(got) != 0 {
		t.Fatalf("sent data the shadow already acknowledged: %+v", got)
	}
	h.request(tISN+11, 0, "klmn")
	got := h.sent()
	if len(got) != 1 || got[0].seq != tISN+11 || got[0].payload != "klmn" {
		t.Fatalf("want the data after the shadow's ACK, got %+v", got)
	}
	h.advance(5 * time.Second)
	for _, p := range h.sent() {
		if p.payload == "abcd" || p.payload == "efghij" {
			t.Fatalf("retransmitted acknowledged data: %+v", p)
		}
	}
}

func TestScenario15ZeroWindowStopsSending(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.NoPacing = true })
	h.handshake(nil, nil)
	h.request(tISN+1, 0, "aaaa")
	h.reply(fACK, tShadowISN+1, tISN+5, 0, 0, nil) // window closed
	h.sent()
	h.request(tISN+5, 0, "bbbb") // probe: one segment may go
	h.request(tISN+9, 0, "cccc")
	if got := h.sent(); len(got) != 1 {
		t.Fatalf("zero window: want one probe segment, got %d", len(got))
	}
	h.reply(fACK, tShadowISN+1, tISN+9, 65535, 0, nil) // window opens
	if got := h.sent(); len(got) != 1 || got[0].payload != "cccc" {
		t.Fatalf("window opened: want the held segment, got %+v", got)
	}
}

func TestScenario15ClientWindowReopensAndProbesAnswered(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(nil, nil)
	h.request(tISN+1, 0, "GET /big")
	h.reply(fACK, tShadowISN+1, tISN+9, 65535, 1000, nil)
	h.sent()
	// The client stops reading: its window closes, and our ACKs say so.
	h.clientSeg(fACK, tISN+9, tProdISN+1000, "", nil)
	h.w.sessions[sessionKey{client: rewrite.TupleOf(tClient, tProd)}].clientWnd = 0
	h.reply(fACK, tShadowISN+1001, tISN+9, 65535, 1000, nil)
	if a := expectOne(t, h.sent(), "ACK"); a.win != 0 {
		t.Fatalf("ACK advertises %d, want the client's zero window", a.win)
	}
	// The shadow probes the zero window: answered.
	h.reply(fACK, tShadowISN+2000, tISN+9, 65535, 0, nil)
	if a := expectOne(t, h.sent(), "ACK to a zero-window probe"); a.ack != Seq(tShadowISN+2001) {
		t.Fatalf("probe answer = %+v", a)
	}
	// The client reads again: its window update reaches the shadow.
	h.clientSeg(fACK, tISN+9, tProdISN+2000, "", nil)
	if a := expectOne(t, h.sent(), "window update"); a.win != 502 {
		t.Fatalf("window update = %+v, want the client's window 502", a)
	}
}

func TestScenario16ShadowRetransmissionReAcked(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(nil, nil)
	h.reply(fACK|fPSH, tShadowISN+1, tISN+1, 65535, 500, nil)
	h.advance(h.cfg.AckDelay)
	if a := expectOne(t, h.sent(), "ACK"); a.ack != Seq(tShadowISN+501) {
		t.Fatalf("ACK = %+v", a)
	}
	h.reply(fACK|fPSH, tShadowISN+1, tISN+1, 65535, 500, nil) // our ACK was lost: at once
	if a := expectOne(t, h.sent(), "re-ACK"); a.ack != Seq(tShadowISN+501) {
		t.Fatalf("re-ACK = %+v", a)
	}
	if h.ctr.c[CtrShadowDupData].Load() != 1 {
		t.Fatal("shadow retransmission not counted")
	}
	// A repeated SYN-ACK (our handshake ACK lost) is ACKed again too.
	h.reply(fSYN|fACK, tShadowISN, tISN+1, 65535, 0, nil)
	if a := expectOne(t, h.sent(), "ACK of repeated SYN-ACK"); a.flags != fACK || a.ack != Seq(tShadowISN+501) {
		t.Fatalf("ACK = %+v", a)
	}
}

func TestScenario21TimestampsEchoed(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(rewrite.AppendTimestamps(nil, 100, 0), rewrite.AppendTimestamps(nil, 9000, 100))
	h.clientSeg(fACK|fPSH, tISN+1, tProdISN+1, "a", rewrite.AppendTimestamps(nil, 105, 4444))
	d := expectOne(t, h.sent(), "data")
	if !d.opts.HasTimestamps() || d.opts.TSEcr != 9000 || d.opts.TSVal != 105 {
		t.Fatalf("timestamps = %+v, want val 105 ecr 9000", d.opts)
	}
	// The shadow's clock moves; an older client TSval is never sent.
	h.reply(fACK|fPSH, tShadowISN+1, tISN+2, 65535, 10, rewrite.AppendTimestamps(nil, 9010, 105))
	h.advance(h.cfg.AckDelay) // the delayed ACK
	ack := expectOne(t, h.sent(), "ACK")
	if ack.opts.TSEcr != 9010 || ack.opts.TSVal < 105 {
		t.Fatalf("ACK timestamps = %+v", ack.opts)
	}
	h.clientSeg(fACK|fPSH, tISN+2, tProdISN+1, "b", rewrite.AppendTimestamps(nil, 104, 4444))
	d2 := expectOne(t, h.sent(), "data 2")
	if d2.opts.TSVal < 105 {
		t.Fatalf("TSval went backwards: %d", d2.opts.TSVal)
	}
}

func TestScenario22WindowScaleApplied(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.NoPacing = true })
	h.handshake(rewrite.AppendWindowScale(nil, 7), rewrite.AppendWindowScale(nil, 2))
	h.request(tISN+1, 0, strings.Repeat("a", 200))
	// Window 100 << 2 = 400 bytes from sndUna.
	h.reply(fACK, tShadowISN+1, tISN+1, 100, 0, nil)
	h.sent()
	h.request(tISN+201, 0, strings.Repeat("b", 200))
	h.request(tISN+401, 0, strings.Repeat("c", 200))
	got := h.sent()
	if len(got) != 1 || got[0].payload[0] != 'b' {
		t.Fatalf("with a scaled window of 400 bytes, want only the second segment, got %d", len(got))
	}
	h.reply(fACK, tShadowISN+1, tISN+201, 100, 0, nil)
	if got := h.sent(); len(got) != 1 || got[0].payload[0] != 'c' {
		t.Fatalf("window slid by 200: want the third segment, got %+v", got)
	}
}

func TestScenario22WindowNotScaledWithoutBothOffers(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.NoPacing = true })
	h.handshake(nil, rewrite.AppendWindowScale(nil, 2)) // the client offered none
	h.request(tISN+1, 0, strings.Repeat("a", 200))
	h.reply(fACK, tShadowISN+1, tISN+1, 100, 0, nil) // 100 bytes: no scaling
	h.sent()
	h.request(tISN+201, 0, strings.Repeat("b", 200))
	if got := h.sent(); len(got) != 0 {
		t.Fatalf("sent beyond an unscaled 100-byte window: %+v", got)
	}
}

func TestScenario23MSSKeptAndSACKNotOffered(t *testing.T) {
	h := newHarness(t, nil)
	opts := rewrite.AppendMSS(nil, 1220)
	opts = append(opts, rewrite.OptSACKPermitted, 2, rewrite.OptNOP, rewrite.OptNOP)
	h.open(opts)
	syn := expectOne(t, h.sent(), "SYN")
	if syn.opts.MSS != 1220 || syn.opts.SACKPermitted {
		t.Fatalf("SYN options %+v: want the client's MSS and no SACK-permitted", syn.opts)
	}
	// SACK blocks from the client refer to prod's sequence space: removed.
	h.reply(fSYN|fACK, tShadowISN, tISN+1, 65535, 0, nil)
	h.sent()
	sack := []byte{rewrite.OptNOP, rewrite.OptNOP, rewrite.OptSACK, 10, 0, 0, 0, 1, 0, 0, 0, 2}
	h.clientSeg(fACK|fPSH, tISN+1, tProdISN+1, "data", sack)
	if d := expectOne(t, h.sent(), "data"); d.opts.SACK {
		t.Fatal("client SACK blocks forwarded to the shadow")
	}
}

func TestACKTranslationAndShadowDataAcked(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(nil, nil)
	h.clientSeg(fACK|fPSH, tISN+1, tProdISN+1, "GET / HTTP/1.1\r\n\r\n", nil)
	data := expectOne(t, h.sent(), "request")
	if data.seq != tISN+1 || data.ack != Seq(tShadowISN+1) || data.payload != "GET / HTTP/1.1\r\n\r\n" {
		t.Fatalf("request = %+v", data)
	}
	// The shadow acknowledges and answers with 3000 bytes in two
	// segments; sequence numbers wrap past 2^32 here.
	h.reply(fACK, tShadowISN+1, tISN+1+18, 65535, 1500, nil)
	h.reply(fACK|fPSH, tShadowISN+1+1500, tISN+1+18, 65535, 1500, nil)
	acks := h.sent()
	if len(acks) == 0 {
		t.Fatal("shadow data not acknowledged")
	}
	if last := acks[len(acks)-1]; last.ack != Seq(tShadowISN+1+3000) || last.seq != tISN+1+18 {
		t.Fatalf("ACK = %+v, want ack %d", last, Seq(tShadowISN+1+3000))
	}
	// A retransmission by the shadow is ACKed again (scenario 16).
	h.reply(fACK, tShadowISN+1, tISN+1+18, 65535, 1500, nil)
	if a := expectOne(t, h.sent(), "re-ACK"); a.ack != Seq(tShadowISN+1+3000) {
		t.Fatalf("re-ACK = %+v", a)
	}
}
