package tcpstate

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/compare"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// comparingHarness is a harness whose worker pairs requests, with a
// response prefix of 64 bytes.
func comparingHarness(t *testing.T) *harness {
	h := newHarness(t, func(c *Config) { c.ComparePrefix = 64 })
	h.w.rec = compare.NewRecorder(64)
	return h
}

// replyData relays one of the shadow's data segments with its first
// ComparePrefix payload bytes, as the agent does when asked for them.
func (h *harness) replyData(flags uint8, seq, ack uint32, payload string) {
	h.t.Helper()
	seg := rewrite.Segment{Src: tShadow, Dst: h.forged, Seq: seq, Ack: ack, Flags: flags, Window: 65535, Payload: []byte(payload)}
	buf := make([]byte, seg.Len())
	if _, err := seg.Put(buf); err != nil {
		h.t.Fatal(err)
	}
	var p rewrite.Packet
	if err := p.Decode(buf); err != nil {
		h.t.Fatal(err)
	}
	b := buf[:len(p.Headers())+min(len(payload), h.cfg.ComparePrefix)]
	var hp rewrite.Packet
	if err := hp.DecodeHeader(b); err != nil {
		h.t.Fatal(err)
	}
	h.w.handleReply(b, hp.Layout(), h.now)
	h.w.Flush(h.now)
}

// prodData feeds one of prod's data segments to the client.
func (h *harness) prodData(seq, ack uint32, payload string) {
	h.t.Helper()
	h.prodPacket(fACK|fPSH, seq, ack, []byte(payload))
}

func (h *harness) pairs() []compare.Pair {
	var out []compare.Pair
	var p compare.Pair
	for h.w.rec.Next(&p) {
		out = append(out, p)
	}
	return out
}

func head(r *compare.Response) string { return string(r.Head[:r.HeadLen]) }

// TestScenario42PairsRequestsWithBothAnswers: each request (a round of
// the pacing) is paired with prod's answer and the shadow's, their first
// bytes and latencies, and handed over once the shadow's answer to the
// next round begins (HTTP/1 answers in order), the shadow ends the
// connection, or the session ends.
func TestScenario42PairsRequestsWithBothAnswers(t *testing.T) {
	h := comparingHarness(t)
	h.handshake(nil, nil)
	const (
		reqA  = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
		reqB  = "GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
		prodA = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
		shA   = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nfail"
	)
	h.request(tISN+1, 0, reqA)
	h.advance(3 * time.Millisecond) // prod takes 3 ms
	h.prodData(tProdISN+1, tISN+1+uint32(len(reqA)), prodA)
	h.advance(7 * time.Millisecond) // the shadow, 10 ms after the request went
	h.replyData(fACK|fPSH, tShadowISN+1, tISN+1+uint32(len(reqA)), shA)
	if got := h.pairs(); len(got) != 0 {
		t.Fatalf("%d pairs before the next round: a round is handed over once the next one goes", len(got))
	}
	h.advance(time.Millisecond)
	h.request(tISN+1+uint32(len(reqA)), uint32(len(prodA)), reqB)
	h.advance(100 * time.Millisecond) // think time kept, quiet period passed
	if got := h.pairs(); len(got) != 0 {
		t.Fatalf("%d pairs after the second request went: the shadow's answer to A may go on", len(got))
	}
	// The shadow resets instead of answering B: A is over, B is paired
	// once prod's answer is in, with the shadow's outcome a reset.
	h.reply(fRST|fACK, tShadowISN+1+uint32(len(shA)), tISN+1+uint32(len(reqA)+len(reqB)), 0, 0, nil)
	got := h.pairs()
	if len(got) != 1 {
		t.Fatalf("%d pairs after the shadow's reset, want A's", len(got))
	}
	p := got[0]
	if string(p.Request[:p.RequestLen]) != reqA || head(&p.Prod) != prodA || head(&p.Shadow) != shA {
		t.Fatalf("pair: request %q, prod %q, shadow %q", p.Request[:p.RequestLen], head(&p.Prod), head(&p.Shadow))
	}
	if p.Prod.Outcome != compare.Answered || p.Shadow.Outcome != compare.Answered {
		t.Fatalf("outcomes %v, %v", p.Prod.Outcome, p.Shadow.Outcome)
	}
	if d := time.Duration(p.Prod.FirstByte - p.Prod.Sent); d != 3*time.Millisecond {
		t.Fatalf("prod latency %v, want 3ms", d)
	}
	if d := time.Duration(p.Shadow.FirstByte - p.Shadow.Sent); d != 10*time.Millisecond {
		t.Fatalf("shadow latency %v, want 10ms", d)
	}
	if p.Client != tClient || p.Map != 0 {
		t.Fatalf("client %v map %d", p.Client, p.Map)
	}
	if got := h.pairs(); len(got) != 0 {
		t.Fatalf("B paired before prod answered it: %+v", got)
	}
	h.prodData(tProdISN+1+uint32(len(prodA)), tISN+1+uint32(len(reqA)+len(reqB)), prodA)
	got = h.pairs()
	if len(got) != 1 || !strings.HasPrefix(string(got[0].Request[:got[0].RequestLen]), "GET /b") || got[0].Shadow.Outcome != compare.Reset {
		t.Fatalf("after the shadow's reset: %d pairs, %+v", len(got), got)
	}
	if h.ctr.c[CtrComparePairs].Load() != 2 {
		t.Fatalf("compare_pairs = %d", h.ctr.c[CtrComparePairs].Load())
	}
}

// TestScenario42NoAnswerThenOverflow: a round the shadow never answers is
// paired with no answer when the next one goes; a shadow lagging more
// than maxPendingRounds rounds behind leaves the oldest unpaired, counted.
func TestScenario42NoAnswerThenOverflow(t *testing.T) {
	h := comparingHarness(t)
	h.handshake(nil, nil)
	seq, prodAt := uint32(tISN+1), uint32(0)
	for i := 0; i < maxPendingRounds+3; i++ {
		req := "GET /" + string(rune('a'+i)) + " HTTP/1.1\r\n\r\n"
		h.request(seq, prodAt, req)
		seq += uint32(len(req))
		h.prodData(tProdISN+1+prodAt, seq, "HTTP/1.1 200 OK\r\n\r\n")
		prodAt += uint32(len("HTTP/1.1 200 OK\r\n\r\n"))
	}
	// Only the first round has gone: the shadow acknowledged nothing.
	if n := h.ctr.c[CtrCompareOverflow].Load(); n != 3 {
		t.Fatalf("compare_overflow = %d with the shadow 7 rounds behind, want 3", n)
	}
	// The shadow acknowledges each request without answering: the pacing
	// goes on after its no-answer wait, round by round.
	for i := 0; i < 3*maxPendingRounds; i++ {
		for _, s := range h.w.byForged {
			h.reply(fACK, tShadowISN+1, uint32(s.sndNxt), 65535, 0, nil)
		}
		h.advance(6 * time.Second)
	}
	got := h.pairs()
	if len(got) != maxPendingRounds-1 {
		t.Fatalf("%d pairs, want %d (the rounds kept, but the last still pending)", len(got), maxPendingRounds-1)
	}
	for i, p := range got {
		if p.Shadow.Outcome != compare.NoAnswer || p.Prod.Outcome != compare.Answered {
			t.Fatalf("pair %d: prod %v, shadow %v; want answered and no answer", i, p.Prod.Outcome, p.Shadow.Outcome)
		}
	}
	if want := "GET /a"; !strings.HasPrefix(string(got[0].Request[:got[0].RequestLen]), want) {
		t.Fatalf("first pair's request %q, want the first round's", got[0].Request[:got[0].RequestLen])
	}
}

// TestScenario42Greeting: what a server says first is paired as a round
// of its own, with an empty request.
func TestScenario42Greeting(t *testing.T) {
	h := comparingHarness(t)
	h.handshake(nil, nil)
	const greet = "\x4a\x00\x00\x00\x0a5.5.5-10.11.6-MariaDB"
	h.prodData(tProdISN+1, tISN+1, greet)
	h.replyData(fACK|fPSH, tShadowISN+1, tISN+1, greet)
	h.request(tISN+1, uint32(len(greet)), "login")
	if got := h.pairs(); len(got) != 0 {
		t.Fatalf("greeting paired before the shadow answered the login: %+v", got)
	}
	h.replyData(fACK|fPSH, tShadowISN+1+uint32(len(greet)), tISN+1+5, "\x07\x00\x00\x02\x00\x00\x00\x02\x00\x00\x00")
	got := h.pairs()
	if len(got) != 1 || got[0].RequestLen != 0 || head(&got[0].Prod) != greet || head(&got[0].Shadow) != greet {
		t.Fatalf("greeting pair: %+v", got)
	}
}

// TestComparisonOffKeepsNoRounds: without a recorder no session keeps
// rounds.
func TestComparisonOffKeepsNoRounds(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(nil, nil)
	h.request(tISN+1, 0, "GET / HTTP/1.1\r\n\r\n")
	for _, s := range h.w.byForged {
		if s.rounds != nil {
			t.Fatal("rounds kept with comparison off")
		}
	}
}

// TestScenario42AnswerOvertakesItsRequest: prod's answer to a request can
// reach the worker before the request (the directions are captured
// apart): it is paired by sequence, with its own request.
func TestScenario42AnswerOvertakesItsRequest(t *testing.T) {
	h := comparingHarness(t)
	h.prodAcks = false
	h.handshake(nil, nil)
	const reqA, reqB = "GET /a HTTP/1.1\r\n\r\n", "GET /b HTTP/1.1\r\n\r\n"
	const ansA, ansB = "HTTP/1.1 200 OK\r\n\r\n", "HTTP/1.1 404 Not Found\r\n\r\n"
	a, b := uint32(len(reqA)), uint32(len(reqB))
	h.request(tISN+1, 0, reqA)
	h.prodData(tProdISN+1, tISN+1+a, ansA)
	// Prod's answer to B, captured before B itself.
	h.prodData(tProdISN+1+uint32(len(ansA)), tISN+1+a+b, ansB)
	h.request(tISN+1+a, uint32(len(ansA)), reqB)
	h.replyData(fACK|fPSH, tShadowISN+1, tISN+1+a, ansA)
	h.advance(100 * time.Millisecond)
	h.replyData(fACK|fPSH, tShadowISN+1+uint32(len(ansA)), tISN+1+a+b, ansB)
	h.reply(fRST|fACK, tShadowISN+1+uint32(len(ansA)+len(ansB)), tISN+1+a+b, 0, 0, nil)
	got := h.pairs()
	if len(got) != 2 {
		t.Fatalf("%d pairs, want 2", len(got))
	}
	for i, want := range []string{ansA, ansB} {
		if head(&got[i].Prod) != want || head(&got[i].Shadow) != want {
			t.Fatalf("pair %d (%q): prod %q, shadow %q; want %q both", i, got[i].Request[:got[i].RequestLen], head(&got[i].Prod), head(&got[i].Shadow), want)
		}
	}
}

// TestScenario42SeveralAnswersOvertake: prod's answers to two requests,
// or to a dozen (a block of the client's capture delivered after a block
// of prod's), reach the worker before the requests: each is paired with
// its own.
func TestScenario42SeveralAnswersOvertake(t *testing.T) {
	t.Run("2", func(t *testing.T) { testAnswersOvertake(t, 3) })
	t.Run("12", func(t *testing.T) { testAnswersOvertake(t, 13) })
}

func testAnswersOvertake(t *testing.T, n int) {
	h := comparingHarness(t)
	h.prodAcks = false
	h.handshake(nil, nil)
	var reqs, answers []string
	for i := range n {
		reqs = append(reqs, "GET /"+itoa(i)+" HTTP/1.1\r\n\r\n")
		answers = append(answers, []string{"HTTP/1.1 200 OK\r\n\r\n", "HTTP/1.1 404 Not Found\r\n\r\n", "HTTP/1.1 500 Oops\r\n\r\n"}[i%3])
	}
	seq, pseq := uint32(tISN+1), uint32(tProdISN+1)
	var acks []uint32
	for i := range reqs {
		acks = append(acks, pseq)
		h.prodData(pseq, seq+uint32(len(reqs[i])), answers[i])
		pseq += uint32(len(answers[i]))
		seq += uint32(len(reqs[i]))
		if i == 0 {
			h.request(tISN+1, 0, reqs[0]) // the first request comes in time
		}
	}
	seq = tISN + 1 + uint32(len(reqs[0]))
	for i := 1; i < len(reqs); i++ {
		h.request(seq, acks[i]-tProdISN-1, reqs[i])
		seq += uint32(len(reqs[i]))
	}
	shseq := tShadowISN + 1
	for i := range reqs {
		for _, s := range h.w.byForged {
			h.replyData(fACK|fPSH, shseq, uint32(s.sndNxt), answers[i])
		}
		shseq += uint32(len(answers[i]))
		h.advance(100 * time.Millisecond)
	}
	h.reply(fRST|fACK, shseq, seq, 0, 0, nil)
	got := h.pairs()
	if len(got) != n {
		for _, p := range got {
			t.Logf("%q: prod %q shadow %q", p.Request[:p.RequestLen], head(&p.Prod), head(&p.Shadow))
		}
		t.Fatalf("%d pairs, want %d", len(got), n)
	}
	for i := range got {
		if head(&got[i].Prod) != answers[i] || head(&got[i].Shadow) != answers[i] {
			t.Fatalf("pair %d (%q): prod %q, shadow %q", i, got[i].Request[:got[i].RequestLen], head(&got[i].Prod), head(&got[i].Shadow))
		}
	}
}

// TestScenario42OrderedAnswersAfterCredit: Redis answers in order, so the
// shadow's answers go to the requests by their starts, not by arrival. A
// renamed command's error is longer than prod's answer; the pacing
// credits the difference to the next rounds, which go before the
// shadow's answers to them: those still pair with their own requests,
// coalesced in one packet or not.
func TestScenario42OrderedAnswersAfterCredit(t *testing.T) {
	for _, coalesced := range []bool{false, true} {
		h := comparingHarness(t)
		h.handshake(nil, nil)
		cmd := func(args ...string) string {
			s := "*" + itoa(len(args)) + "\r\n"
			for _, a := range args {
				s += "$" + itoa(len(a)) + "\r\n" + a + "\r\n"
			}
			return s
		}
		reqs := []string{cmd("SETNX", "k", "v"), cmd("GET", "k"), cmd("SET", "k", "w"), cmd("GET", "k")}
		prod := []string{":1\r\n", "$1\r\nv\r\n", "+OK\r\n", "$1\r\nw\r\n"}
		shadow := []string{"-ERR unknown command 'SETNX', with args beginning with: 'k' 'v' \r\n", "$-1\r\n", "+OK\r\n", "$1\r\nw\r\n"}
		seq, prodAt, shAt := uint32(tISN+1), uint32(0), uint32(0)
		for i := range 3 {
			h.request(seq, prodAt, reqs[i])
			seq += uint32(len(reqs[i]))
			h.prodData(tProdISN+1+prodAt, seq, prod[i])
			prodAt += uint32(len(prod[i]))
			if i == 0 {
				h.replyData(fACK|fPSH, tShadowISN+1, seq, shadow[0])
				shAt += uint32(len(shadow[0]))
			}
		}
		for _, s := range h.w.byForged {
			if s.rounds.n != 3 || !s.rounds.at(2).released {
				t.Fatal("the credit did not release the third round before the shadow's second answer")
			}
		}
		if coalesced {
			h.replyData(fACK|fPSH, tShadowISN+1+shAt, seq, shadow[1]+shadow[2])
			shAt += uint32(len(shadow[1]) + len(shadow[2]))
		} else {
			for _, a := range shadow[1:3] {
				h.replyData(fACK|fPSH, tShadowISN+1+shAt, seq, a)
				shAt += uint32(len(a))
			}
		}
		h.request(seq, prodAt, reqs[3])
		h.prodData(tProdISN+1+prodAt, seq+uint32(len(reqs[3])), prod[3])
		h.replyData(fACK|fPSH, tShadowISN+1+shAt, seq+uint32(len(reqs[3])), shadow[3])
		got := h.pairs()
		if len(got) != 3 {
			t.Fatalf("coalesced %v: %d pairs, want the first 3", coalesced, len(got))
		}
		for i, p := range got {
			if string(p.Request[:p.RequestLen]) != reqs[i] || head(&p.Prod) != prod[i] || head(&p.Shadow) != shadow[i][:min(len(shadow[i]), 64)] {
				t.Errorf("coalesced %v, pair %d: request %q, prod %q, shadow %q", coalesced, i, p.Request[:p.RequestLen], head(&p.Prod), head(&p.Shadow))
			}
		}
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestScenario42OrdinaryCloseIsClosedOnBothSides: the client's last round
// (a goodbye such as PostgreSQL's Terminate) gets no answer but a close,
// from prod and from the shadow alike, in either order of the FINs: both
// sides' outcome is closed, not a shadow timeout.
func TestScenario42OrdinaryCloseIsClosedOnBothSides(t *testing.T) {
	for _, shadowFirst := range []bool{false, true} {
		h := comparingHarness(t)
		h.handshake(nil, nil)
		const bye = "X\x00\x00\x00\x04"
		if shadowFirst {
			h.clientSeg(fACK|fPSH, tISN+1, tProdISN+1, bye, nil)
			h.prodSeg(fACK|fFIN, tProdISN+1, tISN+6, 0)
			expectOne(t, h.sent(), "the goodbye")
			h.reply(fACK|fFIN, tShadowISN+1, tISN+6, 65535, 0, nil) // the shadow closes first
			h.clientSeg(fACK|fFIN, tISN+6, tProdISN+2, "", nil)
			h.sent()
			h.reply(fACK, tShadowISN+2, tISN+7, 65535, 0, nil)
		} else {
			h.clientSeg(fACK|fPSH|fFIN, tISN+1, tProdISN+1, bye, nil)
			h.prodSeg(fACK|fFIN, tProdISN+1, tISN+7, 0)
			expectOne(t, h.sent(), "the goodbye")
			h.reply(fACK, tShadowISN+1, tISN+6, 65535, 0, nil)
			expectOne(t, h.sent(), "FIN")
			h.reply(fACK|fFIN, tShadowISN+1, tISN+7, 65535, 0, nil)
		}
		if h.ended(EndClosed)+h.ended(EndShadowClosed) != 1 {
			t.Fatalf("shadow first %v: not ended by the FINs", shadowFirst)
		}
		got := h.pairs()
		if len(got) != 1 || got[0].Prod.Outcome != compare.Closed || got[0].Shadow.Outcome != compare.Closed {
			t.Errorf("shadow first %v: %d pairs, want one closed on both sides", shadowFirst, len(got))
			for _, p := range got {
				t.Errorf("prod %v, shadow %v", p.Prod.Outcome, p.Shadow.Outcome)
			}
		}
	}
}
