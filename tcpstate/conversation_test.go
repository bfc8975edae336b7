package tcpstate

// Prod's side of the conversation (scenarios 28-35): what prod accepted,
// how its answers pace the copy, and how the copy ends.

import (
	"strings"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/rewrite"
)

// TestScenario28MultiplexedCountsCumulatively: HTTP/2-like traffic. The
// client sends frames after prod's data that prod never answers one by
// one (a SETTINGS ACK, a WINDOW_UPDATE): they wait only until the shadow
// has sent as much as prod had, counted over the whole stream, and a
// longer answer of the shadow's in one round is credited to the next.
func TestScenario28MultiplexedCountsCumulatively(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(nil, nil)
	h.request(tISN+1, 0, "PREFACE+SETTINGS")      // prod had sent nothing: goes at once
	h.prodSeg(fACK|fPSH, tProdISN+1, tISN+17, 30) // prod's SETTINGS
	h.request(tISN+17, 30, "SETTINGS-ACK+HEADERS1")
	if got := dataOf(h.sent()); len(got) != 1 {
		t.Fatalf("the preface did not go at once, or the next frames did not wait: %+v", got)
	}
	// The shadow's SETTINGS and its answer to HEADERS1 come at once, 130
	// bytes: more than prod's 30 so far.
	h.reply(fACK|fPSH, tShadowISN+1, tISN+17, 65535, 130, nil)
	if got := dataOf(h.sent()); len(got) != 1 || got[0].payload != "SETTINGS-ACK+HEADERS1" {
		t.Fatalf("frames not released once the shadow had sent as much as prod: %+v", got)
	}
	h.reply(fACK, tShadowISN+131, tISN+38, 65535, 0, nil)
	// Prod answers HEADERS1 with 100 bytes; the client acknowledges them
	// with a WINDOW_UPDATE: 130 bytes of prod's stream, which the
	// shadow's 130 already cover. It goes without waiting for anything.
	h.prodSeg(fACK|fPSH, tProdISN+31, tISN+38, 100)
	h.request(tISN+38, 130, "WINDOW_UPDATE")
	if got := dataOf(h.sent()); len(got) != 1 || got[0].payload != "WINDOW_UPDATE" {
		t.Fatalf("a frame prod never answers waited for an answer: %+v", got)
	}
	if n := h.ctr.c[CtrPacingNoAnswer].Load() + h.ctr.c[CtrPacingShort].Load(); n != 0 {
		t.Fatalf("%d rounds released by a timeout, want none", n)
	}
}

// TestScenario29PipelinedRequestsGoTogether: many requests in one segment,
// and more sent before any answer (the same ACK), go at once; the next
// batch waits for the burst of answers.
func TestScenario29PipelinedRequestsGoTogether(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(nil, nil)
	batch := strings.Repeat("GET / HTTP/1.1\r\n\r\n", 16)
	h.request(tISN+1, 0, batch)
	h.request(tISN+1+uint32(len(batch)), 0, batch) // written before the answers came
	if got := dataOf(h.sent()); len(got) != 2 {
		t.Fatalf("pipelined requests with the same ACK were held: %d sent", len(got))
	}
	next := tISN + 1 + 2*uint32(len(batch))
	h.prodSeg(fACK|fPSH, tProdISN+1, next, 32*40)
	h.request(next, 32*40, batch) // after prod's 32 answers
	if got := dataOf(h.sent()); len(got) != 0 {
		t.Fatalf("the third batch went before the shadow's answers: %+v", got)
	}
	h.reply(fACK|fPSH, tShadowISN+1, next, 65535, 32*40, nil)
	if got := dataOf(h.sent()); len(got) != 1 {
		t.Fatalf("the third batch not sent after the shadow's burst of answers: %+v", got)
	}
}

// TestScenario30ResetAfterTheDataProdAccepted: the client resets while
// the copy still holds requests prod accepted (pacing waits for the
// shadow): they are delivered first, then the RST; what prod never
// acknowledged is dropped, counted, after a grace for prod's late ACKs.
func TestScenario30ResetAfterTheDataProdAccepted(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(nil, nil)
	h.request(tISN+1, 0, "req1")
	h.request(tISN+5, 100, "req2") // held: the shadow has not answered req1
	h.prodAcks = false
	h.clientSeg(fACK|fPSH, tISN+9, tProdISN+201, "req3", nil) // prod never acknowledges it
	h.sent()
	h.clientSeg(fRST|fACK, tISN+13, tProdISN+201, "", nil)
	if got := h.sent(); len(got) != 0 {
		t.Fatalf("sent at the reset: %+v", got)
	}
	h.reply(fACK|fPSH, tShadowISN+1, tISN+5, 65535, 100, nil)
	if got := dataOf(h.sent()); len(got) != 1 || got[0].payload != "req2" {
		t.Fatalf("req2, which prod accepted, not delivered after the reset: %+v", got)
	}
	h.reply(fACK|fPSH, tShadowISN+101, tISN+9, 65535, 100, nil)
	h.advance(vouchGrace + time.Millisecond)
	got := h.sent()
	if len(dataOf(got)) != 0 || len(got) != 1 || got[0].flags&fRST == 0 || got[0].seq != tISN+9 {
		t.Fatalf("want the RST alone, at req3's place (dropped), got %+v", got)
	}
	if h.ended(EndClientReset) != 1 || h.ctr.c[CtrNotAcceptedBytes].Load() != 4 {
		t.Fatalf("client_reset %d, not_accepted_bytes %d: want 1 and req3's 4", h.ended(EndClientReset), h.ctr.c[CtrNotAcceptedBytes].Load())
	}
}

// TestScenario30ResetWaitsForTheShadowWithNothingQueued: the client's
// last batch of pipelined requests has reached the shadow and been
// acknowledged when the client resets; prod had answered 300 bytes of it.
// The shadow's connection is reset only once the shadow has answered as
// much, not at once while it is still working through the batch.
func TestScenario30ResetWaitsForTheShadowWithNothingQueued(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(nil, nil)
	h.request(tISN+1, 0, "req1req2req3")
	if got := dataOf(h.sent()); len(got) != 1 {
		t.Fatalf("the batch did not reach the shadow: %+v", got)
	}
	h.reply(fACK|fPSH, tShadowISN+1, tISN+13, 65535, 100, nil) // acknowledged, first answer
	h.prodSeg(fACK|fPSH, tProdISN+1, tISN+13, 300)
	h.clientSeg(fRST|fACK, tISN+13, tProdISN+101, "", nil)
	h.advance(vouchGrace + time.Millisecond)
	if got := h.sent(); countFlags(got, fRST) != 0 {
		t.Fatalf("shadow reset with 100 of prod's 300 bytes answered: %+v", got)
	}
	h.reply(fACK|fPSH, tShadowISN+101, tISN+13, 65535, 200, nil)
	h.advance(time.Millisecond)
	if rst := expectOne(t, h.sent(), "RST"); rst.flags&fRST == 0 || rst.seq != tISN+13 {
		t.Fatalf("RST = %+v, want seq %d once the shadow answered as much as prod", rst, tISN+13)
	}
	if h.ended(EndClientReset) != 1 || h.ctr.c[CtrPacingNoAnswer].Load() != 0 {
		t.Fatalf("client_reset %d, pacing_no_answer %d: want 1 and 0", h.ended(EndClientReset), h.ctr.c[CtrPacingNoAnswer].Load())
	}
}

// TestScenario30DrainCutWhenStuck: a drain that stops moving is cut by
// DrainTimeout, counted; one that moves is not.
func TestScenario30DrainCutWhenStuck(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.DrainTimeout = time.Second; c.RTOMax = 10 * time.Second; c.MaxRetransmits = 50 })
	h.handshake(nil, nil)
	h.request(tISN+1, 0, "req1")
	h.clientSeg(fACK|fFIN, tISN+5, tProdISN+1, "", nil)
	h.sent()
	h.advance(900 * time.Millisecond)
	h.reply(fACK, tShadowISN+1, tISN+3, 65535, 0, nil) // progress: the deadline moves
	h.advance(900 * time.Millisecond)
	if h.ended(EndDrainTimeout) != 0 {
		t.Fatal("a moving drain was cut")
	}
	h.advance(200 * time.Millisecond)
	if h.ended(EndDrainTimeout) != 1 || h.ctr.c[CtrDrainCut].Load() != 1 {
		t.Fatal("a stuck drain was not cut and counted")
	}
}

// TestScenario31BulkFillsTheScaledWindow: an upload prod never answers
// goes as fast as the shadow's scaled window allows, without pacing.
func TestScenario31BulkFillsTheScaledWindow(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(rewrite.AppendWindowScale(nil, 7), rewrite.AppendWindowScale(mssOpt(1460), 7))
	h.reply(fACK, tShadowISN+1, tISN+1, 4096, 0, nil) // 4096 << 7: 512 KiB
	chunk := strings.Repeat("x", 1400)
	for i := 0; i < 300; i++ {
		h.request(tISN+1+uint32(i*len(chunk)), 0, chunk)
	}
	if got := dataOf(h.sent()); len(got) != 300 {
		t.Fatalf("%d of 300 upload segments in flight within a 512 KiB window", len(got))
	}
	if n := h.ctr.c[CtrRequests].Load(); n != 0 {
		t.Fatalf("an upload paced as %d rounds", n)
	}
}

// TestScenario32KeepAliveReconnectsAreNotRejections: a shadow closing
// each connection after serving it in full (Connection: close) gets a
// fresh one for every request, without backoff, for ever.
func TestScenario32KeepAliveReconnectsAreNotRejections(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(nil, nil)
	to := h.forged
	seq, answered := uint32(tISN+1), uint32(0)
	for i := 0; i < 8; i++ {
		h.request(seq, answered, "req"+string(rune('0'+i)))
		if i > 0 {
			// The shadow closed the last connection: a fresh one, at once.
			syn := h.sent()
			if len(syn) != 1 || syn[0].flags != fSYN {
				t.Fatalf("request %d: no fresh SYN at once: %+v", i, syn)
			}
			to = syn[0].src
			h.replyTo(to, fSYN|fACK, 5000, seq, 65535, 0, nil)
		}
		if got := dataOf(h.sent()); len(got) != 1 || got[0].src != to {
			t.Fatalf("request %d not sent on its connection: %+v", i, got)
		}
		// Prod answers 100 bytes; the shadow 95 (its headers differ) and
		// closes the connection.
		h.prodSeg(fACK|fPSH, tProdISN+1+answered, seq+4, 100)
		h.replyTo(to, fACK|fPSH|fFIN, 5001, seq+4, 65535, 95, nil)
		h.sent()
		seq, answered = seq+4, answered+100
	}
	if h.ctr.c[CtrShadowRejected].Load() != 0 || h.ctr.c[CtrReconnects].Load() != 7 {
		t.Fatalf("shadow_rejected %d, reconnects %d: a shadow that answered in full was taken for a rejecting one",
			h.ctr.c[CtrShadowRejected].Load(), h.ctr.c[CtrReconnects].Load())
	}
}

// TestScenario33OnlyWhatProdAccepted: nothing reaches the agent or the
// shadow for a SYN prod does not answer, for one prod answers but whose
// client never completes the handshake (SYN cookies, spoofed sources), for
// data of an unknown flow prod resets, and for data beyond what prod
// acknowledged; the slots are freed after the handshake timeout.
func TestScenario33OnlyWhatProdAccepted(t *testing.T) {
	h := newHarness(t, nil)
	h.prodAcks = false
	h.clientSeg(fSYN, tISN, 0, "", nil) // firewalled: prod never answers
	h.client = netipAddrPort("198.18.0.7:1234")
	h.clientSeg(fSYN, tISN, 0, "", nil)
	h.prodSeg(fSYN|fACK, tProdISN, tISN+1, 0) // a SYN cookie; no ACK follows
	h.client = netipAddrPort("198.18.0.8:1234")
	h.clientSeg(fACK|fPSH, 777, 888, "GET /injected", nil) // spoofed data
	h.prodSeg(fRST, 888, 0, 0)                             // prod knows no such connection
	if len(h.rec.events) != 0 {
		t.Fatalf("the copier acted on what prod never accepted: %+v", h.rec.events)
	}
	if h.ctr.c[CtrNotAccepted].Load() != 1 || h.w.Sessions() != 2 {
		t.Fatalf("not_accepted %d, sessions %d: want the reset data counted, 2 handshakes pending",
			h.ctr.c[CtrNotAccepted].Load(), h.w.Sessions())
	}
	h.advance(h.cfg.HandshakeTimeout)
	if h.ctr.c[CtrNotAccepted].Load() != 3 || h.w.Sessions() != 0 || h.ctr.c[CtrSessionsStarted].Load() != 0 {
		t.Fatalf("not_accepted %d, sessions %d: the pending handshakes not freed at the timeout",
			h.ctr.c[CtrNotAccepted].Load(), h.w.Sessions())
	}

	// An accepted connection: data prod has not acknowledged waits for
	// its ACK.
	h.client = tClient
	h.handshake(nil, nil)
	h.clientSeg(fACK|fPSH, tISN+1, tProdISN+1, "out-of-window?", nil)
	if got := dataOf(h.sent()); len(got) != 0 {
		t.Fatalf("data sent before prod acknowledged it: %+v", got)
	}
	h.prodSeg(fACK, tProdISN+1, tISN+15, 0)
	if got := dataOf(h.sent()); len(got) != 1 {
		t.Fatalf("data not sent once prod acknowledged it: %+v", got)
	}
}

// TestScenario33ProdSYNACKBeforeTheClientsSYN: the two directions are
// captured apart; prod's SYN-ACK reaching the worker before the SYN it
// answers still counts.
func TestScenario33ProdSYNACKBeforeTheClientsSYN(t *testing.T) {
	h := newHarness(t, nil)
	h.prodSeg(fSYN|fACK, tProdISN, tISN+1, 0)
	h.clientSeg(fSYN, tISN, 0, "", nil)
	h.clientSeg(fACK, tISN+1, tProdISN+1, "", nil)
	if syn := expectOne(t, h.sent(), "SYN"); syn.flags != fSYN {
		t.Fatalf("want the SYN, got %+v", syn)
	}
}

// TestScenario34TinyMSSIsFloored: a SYN-ACK with MSS 1 makes 536-byte
// segments, not 1-byte ones; a queue built before the handshake is split
// only if its pieces fit the budget, counted before they are taken.
func TestScenario34TinyMSSIsFloored(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.NoPacing = true })
	h.open(nil)
	h.request(tISN+1, 0, strings.Repeat("a", 1400))
	h.reply(fSYN|fACK, tShadowISN, tISN+1, 65535, 0, mssOpt(1))
	got := dataOf(h.sent())
	if len(got) != 3 || len(got[0].payload) != rewrite.DefaultMSS4 {
		t.Fatalf("want 3 pieces of %d bytes, got %d: %+v", rewrite.DefaultMSS4, len(got), got)
	}

	// A budget the pieces would overflow: the session is cut before they
	// are taken, and the budget holds.
	h = newHarness(t, func(c *Config) { c.MaxSessionBytes = 3 * mtuBufSize })
	h.open(nil)
	h.request(tISN+1, 0, strings.Repeat("b", 1400))
	h.request(tISN+1401, 0, strings.Repeat("c", 1400))
	h.reply(fSYN|fACK, tShadowISN, tISN+1, 65535, 0, mssOpt(1))
	if h.ended(EndBufferLimit) != 1 || h.ctr.buffered.Load() != 0 {
		t.Fatalf("buffer_limit %d, buffered %d: want the cut, nothing held", h.ended(EndBufferLimit), h.ctr.buffered.Load())
	}
}

// TestScenario35ServerPushNotAnAnswer: prod pushes data of its own accord;
// the shadow pushes too: the client's next data waits for the shadow's
// push, not for an answer to itself. Should the shadow not push, the wait
// ends after the no-answer bound.
func TestScenario35ServerPushNotAnAnswer(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ResponseTimeout = time.Second })
	h.handshake(nil, nil)
	h.prodSeg(fACK|fPSH, tProdISN+1, tISN+1, 50) // a push
	h.request(tISN+1, 50, "msg1")
	if got := dataOf(h.sent()); len(got) != 0 {
		t.Fatalf("sent before the shadow's own push: %+v", got)
	}
	h.reply(fACK|fPSH, tShadowISN+1, tISN+1, 65535, 50, nil)
	if got := dataOf(h.sent()); len(got) != 1 {
		t.Fatalf("not sent after the shadow's push: %+v", got)
	}
	h.reply(fACK, tShadowISN+51, tISN+5, 65535, 0, nil)
	h.prodSeg(fACK|fPSH, tProdISN+51, tISN+5, 50) // prod pushes again; the shadow does not
	h.request(tISN+5, 100, "msg2")
	h.advance(h.cfg.ResponseTimeout + time.Millisecond)
	if got := dataOf(h.sent()); len(got) != 1 || got[0].payload != "msg2" {
		t.Fatalf("msg2 not sent once the wait for the shadow's push was over: %+v", got)
	}
}
