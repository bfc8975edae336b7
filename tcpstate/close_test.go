package tcpstate

// Ending: FIN, RST, the shadow closing first, lingering, timeouts.

import (
	"testing"
	"time"
)

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
	// Scenario 30: the shadow has not acknowledged "abc" yet, which prod
	// accepted: the RST waits for it.
	h.clientSeg(fRST, tISN+4, 0, "", nil)
	if got := h.sent(); len(got) != 0 {
		t.Fatalf("RST sent before what prod accepted reached the shadow: %+v", got)
	}
	h.reply(fACK, tShadowISN+1, tISN+4, 65535, 0, nil)
	// Then the grace for prod's answers captured apart, then the RST.
	if got := h.sent(); len(got) != 0 {
		t.Fatalf("RST sent before prod's answers could be seen: %+v", got)
	}
	h.advance(vouchGrace)
	rst := expectOne(t, h.sent(), "RST")
	if rst.flags&fRST == 0 || rst.seq != tISN+4 {
		t.Fatalf("RST = %+v, want seq %d", rst, tISN+4)
	}
	if h.ended(EndClientReset) != 1 {
		t.Fatal("client reset not counted")
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

// TestScenario19ReconnectsAreBounded: a shadow that resets every fresh
// connection before answering gets maxReconnects of them, each after a
// longer backoff, then the client flow is given up, counted (scenario 32).
func TestScenario19ReconnectsAreBounded(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(nil, nil)
	to := h.forged
	h.request(tISN+1, 0, "req1")
	h.sent()
	var waits []time.Duration
	for i := 0; i < 10; i++ {
		h.replyTo(to, fRST, 1, 0, 0, 0, nil) // the shadow resets every attempt
		at := h.now
		var got []sentPkt
		for j := 0; j < 100 && len(got) == 0; j++ {
			got = h.sent()
			if len(got) == 0 {
				h.advance(10 * time.Millisecond)
			}
		}
		if len(got) == 0 {
			break
		}
		waits = append(waits, time.Duration(h.now-at))
		to = got[0].src
		h.replyTo(to, fSYN|fACK, 1000, tISN+1, 65535, 0, nil)
		h.sent()
	}
	if n := h.ctr.c[CtrReconnects].Load(); n != maxReconnects {
		t.Fatalf("reconnects = %d, want %d", n, maxReconnects)
	}
	if len(waits) != maxReconnects || waits[0] != 0 || waits[1] < reconnectBackoff || waits[2] < 2*reconnectBackoff {
		t.Fatalf("waits before the fresh connections %v: want none, then backoff doubling from %v", waits, reconnectBackoff)
	}
	if h.ctr.c[CtrShadowRejected].Load() != 1 || h.w.mapCtr[0].shadowRejected.Load() != 1 {
		t.Fatal("the flow given up was not counted as shadow_rejected")
	}
	// The client goes on: nothing more is copied, nothing is joined again.
	h.request(tISN+5, 100, "req2")
	h.advance(time.Second)
	if got := h.sent(); len(got) != 0 {
		t.Fatalf("a rejected flow was copied again: %+v", got)
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
