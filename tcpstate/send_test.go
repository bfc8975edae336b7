package tcpstate

// The send side: pacing of requests, delayed ACKs, send errors.

import (
	"testing"
	"time"
)

// dataOf keeps the packets that carry payload.
func dataOf(pkts []sentPkt) []sentPkt {
	var out []sentPkt
	for _, p := range pkts {
		if p.payload != "" {
			out = append(out, p)
		}
	}
	return out
}

func TestScenario7PacingHoldsNextRequest(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(nil, nil)
	h.request(tISN+1, 0, "req1")
	expectOne(t, h.sent(), "request 1")
	// Prod answered 100 bytes, then the client sent request 2.
	h.request(tISN+5, 100, "req2")
	if got := h.sent(); len(got) != 0 {
		t.Fatalf("request 2 sent before the shadow answered: %+v", got)
	}
	h.reply(fACK, tShadowISN+1, tISN+5, 65535, 0, nil) // ACK only
	if got := h.sent(); len(got) != 0 {
		t.Fatalf("request 2 sent on a bare ACK: %+v", got)
	}
	h.reply(fACK|fPSH, tShadowISN+1, tISN+5, 65535, 100, nil)
	got := h.sent()
	if len(got) != 1 || got[0].payload != "req2" || got[0].ack != Seq(tShadowISN+101) {
		t.Fatalf("after the answer, want request 2 carrying the ACK, got %+v", got)
	}
}

func TestScenario7NoPacingSendsAtOnce(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.NoPacing = true })
	h.handshake(nil, nil)
	h.request(tISN+1, 0, "req1")
	h.request(tISN+5, 100, "req2")
	if got := h.sent(); len(got) != 2 {
		t.Fatalf("without pacing both requests go at once, got %d", len(got))
	}
}

func TestScenario8ShorterAnswerWaitsForQuietPeriod(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(nil, nil)
	h.request(tISN+1, 0, "req1")
	h.request(tISN+5, 100, "req2")
	h.sent()
	h.reply(fACK|fPSH, tShadowISN+1, tISN+5, 65535, 60, nil) // less than prod's 100
	h.sent()
	h.advance(h.cfg.QuietPeriod / 2)
	if got := h.sent(); len(got) != 0 {
		t.Fatalf("request 2 sent before the quiet period: %+v", got)
	}
	h.advance(h.cfg.QuietPeriod)
	if got := h.sent(); len(got) != 1 || got[0].payload != "req2" {
		t.Fatalf("request 2 not sent after the quiet period: %+v", got)
	}
}

func TestScenario8ThinkTimeKept(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(nil, nil)
	h.request(tISN+1, 0, "req1")
	h.sent()
	h.reply(fACK|fPSH, tShadowISN+1, tISN+5, 65535, 100, nil)
	h.sent()
	// The client thought for 500 ms before request 2 (meanwhile our
	// delayed ACK of the answer went).
	h.advance(500 * time.Millisecond)
	h.sent()
	h.request(tISN+5, 100, "req2")
	// Capture time of request 2 is 500 ms after request 1's; it was
	// captured now, and request 1 went out 500 ms ago: it may go at once.
	if got := h.sent(); len(got) != 1 {
		t.Fatalf("request 2 held although prod's think time passed: %+v", got)
	}

	// Now a request captured 300 ms after the previous one, while the
	// shadow answers at once: it must wait the 300 ms.
	h.reply(fACK|fPSH, tShadowISN+101, tISN+9, 65535, 100, nil)
	h.sent()
	h.wall += int64(300 * time.Millisecond) // captured 300 ms later on prod
	h.request(tISN+9, 200, "req3")
	if got := dataOf(h.sent()); len(got) != 0 {
		t.Fatalf("request 3 sent before prod's think time: %+v", got)
	}
	h.advance(299 * time.Millisecond)
	if got := dataOf(h.sent()); len(got) != 0 {
		t.Fatalf("request 3 sent early: %+v", got)
	}
	h.advance(2 * time.Millisecond)
	if got := dataOf(h.sent()); len(got) != 1 || got[0].payload != "req3" {
		t.Fatalf("request 3 not sent after the think time: %+v", got)
	}
}

// TestScenario9NoAnswerGoesOn: a request the shadow acknowledges but never
// answers holds the next one for as long as prod's answers take, with a
// margin (ResponseTimeout before any of prod's answers was seen); then the
// next goes, counted, and the session lives on.
func TestScenario9NoAnswerGoesOn(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ResponseTimeout = 2 * time.Second })
	h.handshake(nil, nil)
	h.request(tISN+1, 0, "req1")
	h.reply(fACK, tShadowISN+1, tISN+5, 65535, 0, nil) // acked, never answered
	h.request(tISN+5, 100, "req2")
	h.sent()
	h.advance(1900 * time.Millisecond)
	if got := dataOf(h.sent()); len(got) != 0 {
		t.Fatalf("req2 went before the wait was over: %+v", got)
	}
	h.advance(200 * time.Millisecond)
	if got := dataOf(h.sent()); len(got) != 1 || got[0].payload != "req2" {
		t.Fatalf("req2 not sent once the wait was over: %+v", got)
	}
	if h.ctr.c[CtrPacingNoAnswer].Load() != 1 || h.w.Sessions() != 1 {
		t.Fatalf("no_answer %d, sessions %d: want 1 release counted, the session alive",
			h.ctr.c[CtrPacingNoAnswer].Load(), h.w.Sessions())
	}
}

// TestScenario9NoAnswerWaitFromProd: once prod's response times are known
// (10 ms here), a request the shadow does not answer holds the next for
// a wait derived from them (noAnswerMin, not ResponseTimeout).
func TestScenario9NoAnswerWaitFromProd(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ResponseTimeout = 2 * time.Second })
	h.handshake(nil, nil)
	h.request(tISN+1, 0, "req1")
	h.advance(10 * time.Millisecond)
	h.prodSeg(fACK|fPSH, tProdISN+1, tISN+5, 100)             // prod answers in 10 ms
	h.reply(fACK|fPSH, tShadowISN+1, tISN+5, 65535, 100, nil) // so does the shadow
	h.request(tISN+5, 100, "req2")
	released := h.now
	if got := dataOf(h.sent()); len(got) != 2 || got[1].payload != "req2" {
		t.Fatalf("req2 not sent after the answer to req1: %+v", got)
	}
	h.reply(fACK, tShadowISN+101, tISN+9, 65535, 0, nil) // acked, never answered
	h.request(tISN+9, 200, "req3")
	h.advance(noAnswerMin - time.Millisecond - time.Duration(h.now-released))
	if got := dataOf(h.sent()); len(got) != 0 {
		t.Fatalf("req3 went before the wait derived from prod: %+v", got)
	}
	h.advance(2 * time.Millisecond)
	if got := dataOf(h.sent()); len(got) != 1 || got[0].payload != "req3" {
		t.Fatalf("req3 not sent after the wait derived from prod (%v): %+v", noAnswerMin, got)
	}
	if h.ctr.c[CtrPacingNoAnswer].Load() != 1 {
		t.Fatalf("no_answer %d, want 1", h.ctr.c[CtrPacingNoAnswer].Load())
	}
}

func TestScenario10ServerFirstWaitsForGreeting(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(nil, nil)
	// The client's first data acknowledges a 50-byte greeting from prod.
	h.request(tISN+1, 50, "AUTH x")
	if got := h.sent(); len(got) != 0 {
		t.Fatalf("client data sent before the shadow's greeting: %+v", got)
	}
	h.reply(fACK|fPSH, tShadowISN+1, tISN+1, 65535, 50, nil)
	if got := h.sent(); len(got) != 1 || got[0].payload != "AUTH x" {
		t.Fatalf("client data not sent after the greeting: %+v", got)
	}
	if h.ctr.c[CtrGreetingWaits].Load() != 1 {
		t.Fatal("greeting wait not counted")
	}
}

func TestSendErrorsAreCountedNotFatal(t *testing.T) {
	h := newHarness(t, nil)
	h.rec.fail = errTest
	h.open(nil)
	if h.ctr.c[CtrSendErrors].Load() != 1 || h.w.Sessions() != 1 {
		t.Fatal("send error not counted or session lost")
	}
}

func TestDelayedAckRidesOnTheNextRequest(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(nil, mssOpt(1460))
	h.request(tISN+1, 0, "req1")
	h.sent()
	h.reply(fACK|fPSH, tShadowISN+1, tISN+5, 65535, 100, nil) // a small answer
	if got := h.sent(); len(got) != 0 {
		t.Fatalf("ACKed a small answer at once: %+v", got)
	}
	h.advance(h.cfg.AckDelay / 2)
	h.request(tISN+5, 100, "req2")
	got := h.sent()
	if len(got) != 1 || got[0].payload != "req2" || got[0].ack != Seq(tShadowISN+101) {
		t.Fatalf("want request 2 carrying the ACK, got %+v", got)
	}
	h.advance(h.cfg.AckDelay)
	if got := h.sent(); len(got) != 0 {
		t.Fatalf("a pure ACK followed the request that carried it: %+v", got)
	}
	// Two full segments: ACKed at once, as RFC 5681 asks.
	h.reply(fACK, tShadowISN+101, tISN+9, 65535, 1460, nil)
	if got := h.sent(); len(got) != 0 {
		t.Fatalf("ACKed one full segment at once: %+v", got)
	}
	h.reply(fACK, tShadowISN+1561, tISN+9, 65535, 1460, nil)
	if a := expectOne(t, h.sent(), "ACK of two segments"); a.ack != Seq(tShadowISN+3021) {
		t.Fatalf("ACK = %+v", a)
	}
}
