package tcpstate

// Admission: sessions starting (scenarios 1-5) and shedding (27).

import (
	"fmt"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/rewrite"
)

func TestScenario1RegisterBeforeSYNAndHandshake(t *testing.T) {
	h := newHarness(t, nil)
	synOpts := rewrite.AppendMSS(nil, 1460)
	synOpts = append(synOpts, rewrite.OptSACKPermitted, 2)
	synOpts = rewrite.AppendWindowScale(synOpts, 7)
	// Nothing reaches the agent or the shadow before prod accepted the
	// connection and the client acknowledged that (scenario 33).
	h.clientSeg(fSYN, tISN, 0, "", synOpts)
	h.prodSeg(fSYN|fACK, tProdISN, tISN+1, 0)
	if len(h.rec.events) != 0 {
		t.Fatalf("the copier acted before prod's connection was complete: %+v", h.rec.events)
	}
	h.clientSeg(fACK, tISN+1, tProdISN+1, "", nil)

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
	h.open(nil)
	h.sent()
	h.clientSeg(fSYN, tISN, 0, "", nil)
	if got := h.sent(); len(got) != 0 {
		t.Fatalf("retransmitted SYN sent %d packets", len(got))
	}
	if h.ctr.c[CtrSessionsStarted].Load() != 1 || h.ctr.c[CtrSynRetransmit].Load() != 1 {
		t.Fatalf("started=%d synRetransmits=%d", h.ctr.c[CtrSessionsStarted].Load(), h.ctr.c[CtrSynRetransmit].Load())
	}
}

func TestScenario3PortReuseStartsNewSession(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(nil, nil)
	h.clientSeg(fSYN, tISN+100000, 0, "", nil)
	h.accept(tISN + 100000)
	got := h.sent()
	if len(got) != 2 || got[0].flags&fRST == 0 || got[1].flags != fSYN || got[1].seq != tISN+100000 {
		t.Fatalf("want RST for the old session then the new SYN, got %+v", got)
	}
	if h.ended(EndPortReuse) != 1 || h.ctr.c[CtrSessionsStarted].Load() != 2 || h.w.Sessions() != 1 {
		t.Fatal("port reuse not handled as a new session")
	}
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
	h.accept(tISN + 100000)
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

func TestScenario4HandshakeTimeout(t *testing.T) {
	h := newHarness(t, nil)
	h.open(nil)
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

func TestScenario5JoinMidstream(t *testing.T) {
	h := newHarness(t, nil)
	h.prodAcks = false
	h.clientSeg(fACK|fPSH, 777777, tProdISN+900, "GET /late", nil)
	if got := h.sent(); len(got) != 0 {
		t.Fatalf("joined before prod acknowledged the data (scenario 33): %+v", got)
	}
	h.prodSeg(fACK, tProdISN+900, 777777+9, 0)
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

func TestForgedTuplesCollisionFree(t *testing.T) {
	// Two clients mapped to the same forged address with the same port
	// must not share a forged tuple.
	h := newHarness(t, func(c *Config) {
		pool, _ := rewrite.NewPool([]netipPrefix{netipMustPrefix("198.19.0.7/32")}, 0)
		c.Pool = pool
	})
	h.open(nil)
	h.client = netipAddrPort("198.18.0.3:40000")
	h.open(nil)
	got := h.sent()
	if len(got) != 2 || got[0].src == got[1].src {
		t.Fatalf("forged tuples collide: %+v", got)
	}
	if got[0].src.Addr() != got[1].src.Addr() {
		t.Fatal("single-address pool not used")
	}
}
