package tcpstate

import (
	"fmt"
	"strings"
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

func TestScenario1RegisterBeforeSYNAndHandshake(t *testing.T) {
	h := newHarness(t, nil)
	synOpts := rewrite.AppendMSS(nil, 1460)
	synOpts = append(synOpts, rewrite.OptSACKPermitted, 2)
	synOpts = rewrite.AppendWindowScale(synOpts, 7)
	h.clientSeg(fSYN, tISN, 0, "", synOpts)

	ev := h.rec.events
	if len(ev) != 2 || ev[0].kind != "register" || ev[1].kind != "send" {
		t.Fatalf("want register then send, got %+v", ev)
	}
	flow := ev[0].flow
	if flow.SrcAddrPort() != h.forged || flow.DstAddrPort() != tShadow {
		t.Fatalf("registered %v, want %v->%v", flow, h.forged, tShadow)
	}
	if !tPool.Contains(h.forged.Addr()) {
		t.Fatalf("forged address %v outside the pool", h.forged)
	}
	syn := expectOne(t, h.sent(), "SYN")
	if syn.flags != fSYN || syn.seq != tISN || syn.src != h.forged || syn.dst != tShadow {
		t.Fatalf("SYN = %+v", syn)
	}
	if syn.opts.SACKPermitted {
		t.Fatal("SYN still offers SACK (scenario 23)")
	}
	if syn.opts.MSS != 1460 || syn.opts.WindowScale != 7 {
		t.Fatalf("client options not kept: %+v", syn.opts)
	}

	h.reply(fSYN|fACK, tShadowISN, tISN+1, 65535, 0, rewrite.AppendMSS(nil, 1400))
	ack := expectOne(t, h.sent(), "handshake ACK")
	if ack.flags != fACK || ack.seq != tISN+1 || ack.ack != Seq(tShadowISN+1) {
		t.Fatalf("handshake ACK = %+v, want seq %d ack %d", ack, tISN+1, Seq(tShadowISN+1))
	}
	if h.ctr.c[CtrSessionsStarted].Load() != 1 {
		t.Fatal("session not counted")
	}
}

func TestScenario2SynRetransmitIsNotANewSession(t *testing.T) {
	h := newHarness(t, nil)
	h.clientSeg(fSYN, tISN, 0, "", nil)
	h.sent()
	h.clientSeg(fSYN, tISN, 0, "", nil)
	if got := h.sent(); len(got) != 0 {
		t.Fatalf("retransmitted SYN sent %d packets", len(got))
	}
	if h.ctr.c[CtrSessionsStarted].Load() != 1 || h.ctr.c[CtrSynRetransmit].Load() != 1 {
		t.Fatalf("started=%d synRetransmits=%d", h.ctr.c[CtrSessionsStarted].Load(), h.ctr.c[CtrSynRetransmit].Load())
	}
}

func TestScenario4HandshakeTimeout(t *testing.T) {
	h := newHarness(t, nil)
	h.clientSeg(fSYN, tISN, 0, "", nil)
	h.sent()
	h.advance(1001 * time.Millisecond)
	if got := h.sent(); len(got) != 1 || got[0].flags != fSYN {
		t.Fatalf("SYN not retransmitted after the initial RTO: %+v", got)
	}
	h.advance(4 * time.Second)
	rst := expectOne(t, h.sent(), "RST after handshake timeout")
	if rst.flags&fRST == 0 || rst.seq != tISN+1 {
		t.Fatalf("RST = %+v", rst)
	}
	if h.ended(EndHandshakeTimeout) != 1 {
		t.Fatal("handshake timeout not counted")
	}
	h.advance(h.cfg.Linger)
	if h.w.Sessions() != 0 || h.ctr.active.Load() != 0 {
		t.Fatalf("session not removed after linger: %d", h.w.Sessions())
	}
	last := h.rec.events[len(h.rec.events)-1]
	if last.kind != "deregister" {
		t.Fatalf("flow not deregistered: %+v", last)
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

// request sends a client request whose ACK says prod had sent
// prodAnswered bytes by then.
func (h *harness) request(seq uint32, prodAnswered uint32, body string) {
	h.t.Helper()
	h.clientSeg(fACK|fPSH, seq, tProdISN+1+prodAnswered, body, nil)
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

func TestScenario9ResponseTimeoutCutsSession(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ResponseTimeout = 2 * time.Second })
	h.handshake(nil, nil)
	h.request(tISN+1, 0, "req1")
	h.reply(fACK, tShadowISN+1, tISN+5, 65535, 0, nil) // acked, never answered
	h.request(tISN+5, 100, "req2")
	h.sent()
	h.advance(1900 * time.Millisecond)
	if h.ended(EndResponseTimeout) != 0 {
		t.Fatal("cut too early")
	}
	h.advance(200 * time.Millisecond)
	if h.ended(EndResponseTimeout) != 1 {
		t.Fatal("response timeout not counted")
	}
	got := h.sent()
	if len(got) != 1 || got[0].flags&fRST == 0 || got[0].seq != tISN+5 {
		t.Fatalf("want one RST at the shadow's expected seq, got %+v", got)
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

func TestScenario17FinHeldUntilDataAcked(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(nil, nil)
	h.clientSeg(fACK|fPSH|fFIN, tISN+1, tProdISN+1, "bye", nil) // FIN with data
	got := h.sent()
	if len(got) != 1 || got[0].payload != "bye" || got[0].flags&fFIN != 0 {
		t.Fatalf("want the data alone first, got %+v", got)
	}
	h.reply(fACK, tShadowISN+1, tISN+4, 65535, 0, nil)
	fin := expectOne(t, h.sent(), "FIN")
	if fin.flags != fFIN|fACK || fin.seq != tISN+4 {
		t.Fatalf("FIN = %+v", fin)
	}
	h.reply(fACK|fFIN, tShadowISN+1, tISN+5, 65535, 0, nil)
	last := expectOne(t, h.sent(), "ACK of the shadow's FIN")
	if last.ack != Seq(tShadowISN+2) {
		t.Fatalf("ACK of FIN = %+v", last)
	}
	if h.ended(EndClosed) != 1 {
		t.Fatal("normal close not counted")
	}
	// A late ACK of our FIN is the close completing: no answer.
	h.reply(fACK, tShadowISN+2, tISN+5, 65535, 0, nil)
	if got := h.sent(); len(got) != 0 {
		t.Fatalf("answered the final ACK: %+v", got)
	}
	// A late reply (the shadow repeating its FIN) is answered with RST
	// (scenario 20).
	h.reply(fACK|fFIN, tShadowISN+1, tISN+5, 65535, 0, nil)
	if rst := expectOne(t, h.sent(), "RST to late reply"); rst.flags != fRST || rst.seq != tISN+5 {
		t.Fatalf("RST = %+v", rst)
	}
	h.advance(h.cfg.Linger)
	if h.w.Sessions() != 0 {
		t.Fatal("closed session not removed after linger")
	}
}

func TestScenario18ClientReset(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(nil, nil)
	h.request(tISN+1, 0, "abc")
	h.sent()
	h.clientSeg(fRST, tISN+4, 0, "", nil)
	rst := expectOne(t, h.sent(), "RST")
	if rst.flags&fRST == 0 || rst.seq != tISN+4 {
		t.Fatalf("RST = %+v, want seq %d", rst, tISN+4)
	}
	if h.ended(EndClientReset) != 1 {
		t.Fatal("client reset not counted")
	}
}

func TestScenario26IdleExpiry(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.IdleTimeout = 10 * time.Second })
	h.handshake(nil, nil)
	h.advance(9 * time.Second)
	if h.ended(EndIdle) != 0 {
		t.Fatal("expired early")
	}
	h.advance(2 * time.Second)
	if h.ended(EndIdle) != 1 {
		t.Fatal("idle expiry not counted")
	}
	if got := h.sent(); len(got) != 1 || got[0].flags&fRST == 0 {
		t.Fatalf("want an RST on expiry, got %+v", got)
	}
	h.advance(h.cfg.Linger)
	if h.w.Sessions() != 0 || h.ctr.active.Load() != 0 || len(h.w.byForged) != 0 {
		t.Fatal("session table not empty after expiry and linger")
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

func TestScenario3PortReuseStartsNewSession(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(nil, nil)
	h.clientSeg(fSYN, tISN+100000, 0, "", nil)
	got := h.sent()
	if len(got) != 2 || got[0].flags&fRST == 0 || got[1].flags != fSYN || got[1].seq != tISN+100000 {
		t.Fatalf("want RST for the old session then the new SYN, got %+v", got)
	}
	if h.ended(EndPortReuse) != 1 || h.ctr.c[CtrSessionsStarted].Load() != 2 || h.w.Sessions() != 1 {
		t.Fatal("port reuse not handled as a new session")
	}
}

func TestScenario5JoinMidstream(t *testing.T) {
	h := newHarness(t, nil)
	h.clientSeg(fACK|fPSH, 777777, tProdISN+900, "GET /late", nil)
	syn := expectOne(t, h.sent(), "synthetic SYN")
	if syn.flags != fSYN || syn.seq != 777776 || syn.opts.MSS != h.cfg.SynMSS {
		t.Fatalf("synthetic SYN = %+v", syn)
	}
	h.reply(fSYN|fACK, tShadowISN, 777777, 65535, 0, nil)
	got := h.sent()
	if len(got) != 2 || got[0].flags != fACK || got[1].payload != "GET /late" || got[1].ack != Seq(tShadowISN+1) {
		t.Fatalf("want the synthetic ACK then the data, got %+v", got)
	}
	if h.ctr.c[CtrJoinedMidstream].Load() != 1 {
		t.Fatal("mid-stream join not counted")
	}
	// A pure ACK of an unknown flow is ignored, counted.
	h.client = netipAddrPort("198.18.0.3:1234")
	h.clientSeg(fACK, 1, 1, "", nil)
	if h.ctr.c[CtrIgnoredNoSession].Load() != 1 || len(h.sent()) != 0 {
		t.Fatal("pure ACK without session not ignored")
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

func TestScenario27BufferLimitCutsSession(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxSessionBytes = 3 * smallBufSize })
	h.clientSeg(fSYN, tISN, 0, "", nil) // no SYN-ACK: data piles up
	for i := 0; i < 4; i++ {
		h.request(tISN+1+uint32(i*10), 0, "0123456789")
	}
	if h.ended(EndBufferLimit) != 1 {
		t.Fatal("buffer limit not enforced")
	}
	if h.ctr.buffered.Load() != 0 {
		t.Fatalf("memory not returned: %d bytes still buffered", h.ctr.buffered.Load())
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

func TestScenario6StaleReplyResetsAndRestarts(t *testing.T) {
	h := newHarness(t, nil)
	h.clientSeg(fSYN, tISN, 0, "", nil)
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

func TestSendErrorsAreCountedNotFatal(t *testing.T) {
	h := newHarness(t, nil)
	h.rec.fail = errTest
	h.clientSeg(fSYN, tISN, 0, "", nil)
	if h.ctr.c[CtrSendErrors].Load() != 1 || h.w.Sessions() != 1 {
		t.Fatal("send error not counted or session lost")
	}
}

func TestForgedTuplesCollisionFree(t *testing.T) {
	// Two clients mapped to the same forged address with the same port
	// must not share a forged tuple.
	h := newHarness(t, func(c *Config) {
		pool, _ := rewrite.NewPool([]netipPrefix{netipMustPrefix("198.19.0.7/32")}, 0)
		c.Pool = pool
	})
	h.clientSeg(fSYN, tISN, 0, "", nil)
	h.client = netipAddrPort("198.18.0.3:40000")
	h.clientSeg(fSYN, tISN, 0, "", nil)
	got := h.sent()
	if len(got) != 2 || got[0].src == got[1].src {
		t.Fatalf("forged tuples collide: %+v", got)
	}
	if got[0].src.Addr() != got[1].src.Addr() {
		t.Fatal("single-address pool not used")
	}
}

func TestScenario19ShadowClosesKeepAliveThenFreshConnection(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(nil, nil)
	h.request(tISN+1, 0, "req1")
	h.reply(fACK|fPSH, tShadowISN+1, tISN+5, 65535, 100, nil)
	h.sent()
	// The shadow's keep-alive expires first: it closes.
	h.reply(fACK|fFIN, tShadowISN+101, tISN+5, 65535, 0, nil)
	fin := expectOne(t, h.sent(), "our FIN")
	if fin.flags != fFIN|fACK || fin.ack != Seq(tShadowISN+102) || fin.seq != tISN+5 {
		t.Fatalf("FIN = %+v", fin)
	}
	if h.ended(EndShadowClosed) != 1 {
		t.Fatal("shadow close not counted")
	}
	// Prod kept the connection: the client sends request 2 later.
	h.advance(2 * time.Second)
	h.request(tISN+5, 100, "req2")
	syn := expectOne(t, h.sent(), "fresh SYN")
	if syn.flags != fSYN || syn.seq != tISN+4 || syn.src.Port() == h.forged.Port() {
		t.Fatalf("fresh SYN = %+v (old forged port %d)", syn, h.forged.Port())
	}
	if h.ctr.c[CtrReconnects].Load() != 1 {
		t.Fatal("reconnect not counted")
	}
	h.replyTo(syn.src, fSYN|fACK, 777, tISN+5, 65535, 0, nil)
	got := h.sent()
	if len(got) != 2 || got[0].flags != fACK || got[1].payload != "req2" || got[1].ack != 778 || got[1].src != syn.src {
		t.Fatalf("want the ACK then request 2 on the new connection, got %+v", got)
	}
}

func TestScenario19ShadowResetMovesQueuedRequests(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(nil, nil)
	h.request(tISN+1, 0, "req1")
	h.request(tISN+5, 100, "req2") // held: the shadow has not answered req1
	h.sent()
	h.reply(fRST, tShadowISN+1, 0, 0, 0, nil)
	syn := expectOne(t, h.sent(), "fresh SYN")
	// Nothing was acknowledged: both requests go again, from req1.
	if syn.flags != fSYN || syn.seq != tISN {
		t.Fatalf("fresh SYN = %+v", syn)
	}
	h.replyTo(syn.src, fSYN|fACK, 500, tISN+1, 65535, 0, nil)
	got := h.sent()
	if len(got) != 2 || got[1].payload != "req1" {
		t.Fatalf("want ACK and req1 on the new connection, got %+v", got)
	}
	h.replyTo(syn.src, fACK|fPSH, 501, tISN+5, 65535, 100, nil)
	if got := h.sent(); len(got) != 1 || got[0].payload != "req2" {
		t.Fatalf("req2 not sent after the answer on the new connection: %+v", got)
	}
}

func TestScenario19ReconnectsAreBounded(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(nil, nil)
	to := h.forged
	h.request(tISN+1, 0, "req1")
	h.sent()
	for i := 0; i < 10; i++ {
		h.replyTo(to, fRST, 1, 0, 0, 0, nil) // the shadow resets every attempt
		got := h.sent()
		if len(got) == 0 {
			break
		}
		to = got[0].src
		h.replyTo(to, fSYN|fACK, 1000, tISN+1, 65535, 0, nil)
		h.sent()
	}
	if n := h.ctr.c[CtrReconnects].Load(); n != maxReconnects {
		t.Fatalf("reconnects = %d, want %d", n, maxReconnects)
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

func TestScenario20AbnormalEndResetsAndLingers(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.IdleTimeout = time.Second; c.Linger = 3 * time.Second })
	h.handshake(nil, nil)
	h.request(tISN+1, 0, "abcd")
	h.reply(fACK, tShadowISN+1, tISN+5, 65535, 0, nil)
	h.sent()
	h.advance(1100 * time.Millisecond)
	rst := expectOne(t, h.sent(), "RST on expiry")
	if rst.flags&fRST == 0 || rst.seq != tISN+5 {
		t.Fatalf("RST = %+v, want seq %d", rst, tISN+5)
	}
	// The shadow, which did not get the RST, still sends: each late reply
	// is reset at exactly the sequence number it expects.
	h.advance(time.Second)
	h.reply(fACK|fPSH, tShadowISN+1, tISN+5, 65535, 100, nil)
	late := expectOne(t, h.sent(), "RST to late reply")
	if late.flags != fRST || late.seq != tISN+5 {
		t.Fatalf("late RST = %+v", late)
	}
	if h.ctr.c[CtrLateReplyRST].Load() != 1 || h.w.Sessions() != 1 {
		t.Fatal("late reply not answered by the lingering session")
	}
	h.advance(3 * time.Second)
	if h.w.Sessions() != 0 {
		t.Fatal("session outlived its linger")
	}
	h.reply(fACK, tShadowISN+1, tISN+5, 65535, 0, nil)
	if len(h.sent()) != 0 || h.ctr.c[CtrRepliesNoSession].Load() != 1 {
		t.Fatal("reply after removal not counted as without session")
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
	h.clientSeg(fSYN, tISN, 0, "", opts)
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

func TestScenario27SheddingIsGradualAndByFlowHash(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxSessions = 100 })
	start := func(i int) bool {
		before := h.w.Sessions()
		h.client = netipAddrPort(fmt.Sprintf("198.18.0.%d:%d", 2+i%200, 10000+i))
		h.clientSeg(fSYN, tISN, 0, "", nil)
		return h.w.Sessions() > before
	}
	admitted := 0
	for i := 0; i < 100; i++ {
		if start(i) {
			admitted++
		}
	}
	// Everything up to half the budget; then a shrinking share; never
	// beyond the budget.
	if admitted <= 50 || admitted >= 100 || h.w.Sessions() > 100 {
		t.Fatalf("admitted %d of 100 with a budget of 100 sessions: want gradual shedding past 50", admitted)
	}
	if got := h.ctr.c[CtrShedSessions].Load(); got != uint64(100-admitted) {
		t.Fatalf("shed counted %d, refused %d", got, 100-admitted)
	}
	// The same flow gets the same answer at the same load: find a
	// refused one, then retransmit its SYN.
	probe := -1
	for i := 1000; i < 1100 && probe < 0; i++ {
		if !start(i) {
			probe = i
		} else {
			admitted++
		}
	}
	if probe < 0 {
		t.Fatal("no flow refused at high load")
	}
	if start(probe) {
		t.Fatal("a refused flow's retransmitted SYN was admitted at the same load")
	}
}

func TestScenario19ClientFinishingReleasesTheFlow(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.IdleTimeout = time.Minute })
	h.handshake(nil, nil)
	h.request(tISN+1, 0, "req1")
	h.reply(fACK|fPSH|fFIN, tShadowISN+1, tISN+5, 65535, 100, nil) // answer and close
	h.sent()
	if h.ended(EndShadowClosed) != 1 {
		t.Fatal("shadow close not counted")
	}
	h.clientSeg(fACK|fFIN, tISN+5, tProdISN+102, "", nil) // the client closes too
	h.advance(h.cfg.Linger + time.Millisecond)
	if h.w.Sessions() != 0 {
		t.Fatal("flow kept for the idle timeout although the client closed")
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

func TestScenario19ShadowClosesWithRequestAndClientFINQueued(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(nil, nil)
	h.request(tISN+1, 0, "req1")
	h.reply(fACK|fPSH, tShadowISN+1, tISN+5, 65535, 100, nil)
	h.sent()
	// The client sends its last request and closes at once; prod's think
	// time holds the request, the FIN waits behind it.
	h.wall += int64(time.Second)
	h.clientSeg(fACK|fPSH|fFIN, tISN+5, tProdISN+101, "req2", nil)
	if got := h.sent(); len(got) != 0 {
		t.Fatalf("sent before the think time: %+v", got)
	}
	// Meanwhile the shadow's keep-alive expires.
	h.reply(fACK|fFIN, tShadowISN+101, tISN+5, 65535, 0, nil)
	got := h.sent()
	if len(got) != 2 || got[0].flags != fFIN|fACK || got[1].flags != fSYN {
		t.Fatalf("want our FIN on the old connection and a fresh SYN, got %+v", got)
	}
	syn := got[1]
	h.replyTo(syn.src, fSYN|fACK, 900, tISN+5, 65535, 0, nil)
	got = h.sent()
	if len(got) < 2 || got[1].payload != "req2" {
		t.Fatalf("request 2 not carried by the fresh connection: %+v", got)
	}
	h.replyTo(syn.src, fACK|fPSH, 901, tISN+9, 65535, 100, nil)
	if fin := h.sent(); len(fin) != 1 || fin[0].flags != fFIN|fACK || fin[0].seq != tISN+9 {
		t.Fatalf("want the client's FIN on the fresh connection after the answer, got %+v", fin)
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

func TestScenario3PortReuseWhileTheOldCopyLags(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(nil, nil)
	h.request(tISN+1, 0, "req1")
	old := h.sent()[0].src
	// The client closed, and opens a new connection from the same port
	// before the shadow acknowledged request 1.
	h.clientSeg(fACK|fFIN, tISN+5, tProdISN+100, "", nil)
	h.clientSeg(fSYN, tISN+100000, 0, "", nil)
	got := h.sent()
	if len(got) != 1 || got[0].flags != fSYN || got[0].src == old {
		t.Fatalf("want only the new SYN, from another forged port, got %+v (old %v)", got, old)
	}
	if h.ended(EndPortReuse) != 0 || h.ctr.c[CtrPortReuseLagging].Load() != 1 || h.w.Sessions() != 2 {
		t.Fatal("the lagging old copy was not left to finish")
	}
	// The old copy goes on: the shadow answers request 1, our FIN follows.
	h.replyTo(old, fACK|fPSH, tShadowISN+1, tISN+5, 65535, 100, nil)
	if fin := h.sent(); len(fin) != 1 || fin[0].flags != fFIN|fACK || fin[0].src != old {
		t.Fatalf("old copy did not finish: %+v", fin)
	}
}
