package tcpstate

import (
	"math"
	"net/netip"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/rewrite"
)

// flowTable is a Registrar that fails the test on a flow registered
// twice: the agent's view of the forged tuples, and the shadow's.
type flowTable struct {
	t     testing.TB
	live  map[rewrite.Tuple]bool
	total int
}

func (f *flowTable) Register(t rewrite.Tuple) {
	if f.live[t] {
		f.t.Errorf("flow %v registered twice", t)
	}
	f.live[t] = true
	f.total++
}

func (f *flowTable) Deregister(t rewrite.Tuple) { delete(f.live, t) }

// dataSender is a shadow that accepts every SYN and counts the data
// segments sent to it by forged source.
type dataSender struct {
	bySrc   map[netip.AddrPort]int
	synAcks [][]byte // its answers, to be relayed
}

func (d *dataSender) Send(b []byte) error {
	var p rewrite.Packet
	if p.Decode(b) != nil {
		return nil
	}
	tcp := p.TCP()
	src := netip.AddrPortFrom(p.SrcAddr(), tcp.SrcPort())
	if tcp.Flags()&fSYN != 0 {
		seg := rewrite.Segment{Src: netip.AddrPortFrom(p.DstAddr(), tcp.DstPort()), Dst: src,
			Seq: 7777, Ack: tcp.Seq() + 1, Flags: fSYN | fACK, Window: 65535}
		hdr := make([]byte, seg.Len())
		seg.Put(hdr)
		d.synAcks = append(d.synAcks, hdr)
	}
	if p.PayloadLen() > 0 {
		d.bySrc[src]++
	}
	return nil
}

// stepped is an engine whose workers are run by the test, in step: the
// Input queues, drain hands every queued packet to its worker.
type stepped struct {
	t   testing.TB
	e   *Engine
	in  *Input
	out *dataSender
	now int64
	ts  time.Time
}

func newStepped(t testing.TB, cfg Config, workers int, reg Registrar, out *dataSender) *stepped {
	senders := make([]Sender, workers)
	for i := range senders {
		senders[i] = out
	}
	e, err := NewEngine(cfg, senders, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &stepped{t: t, e: e, in: e.NewInput(), out: out, now: 1e9, ts: time.Unix(1700000000, 0)}
}

func (s *stepped) feed(seg rewrite.Segment) {
	b := make([]byte, seg.Len())
	if _, err := seg.Put(b); err != nil {
		s.t.Fatal(err)
	}
	s.in.Handle(b, s.ts)
	for len(s.e.loops[0].pkts)+len(s.e.loops[len(s.e.loops)-1].pkts)+len(s.out.synAcks) > 0 {
		for _, l := range s.e.loops {
			for len(l.pkts) > 0 {
				l.captured(<-l.pkts, s.now)
			}
			l.w.Flush(s.now)
		}
		answers := s.out.synAcks
		s.out.synAcks = nil
		for _, hdr := range answers {
			s.e.HandleReply(hdr)
		}
		for _, l := range s.e.loops {
			for len(l.replies) > 0 {
				l.reply = <-l.replies
				l.w.handleReply(l.reply.hdr[:l.reply.n], l.reply.lay, s.now)
			}
			l.w.Flush(s.now)
		}
	}
}

// connect plays client c's connection with ISN isn as prod and the
// client exchange it: SYN, prod's SYN-ACK, the handshake ACK, and one
// request prod acknowledges.
func (s *stepped) connect(c netip.AddrPort, isn uint32, req string) {
	s.feed(rewrite.Segment{Src: c, Dst: tProd, Seq: isn, Flags: fSYN, Window: 65535})
	s.feed(rewrite.Segment{Src: tProd, Dst: c, Seq: tProdISN, Ack: isn + 1, Flags: fSYN | fACK, Window: 65535})
	s.feed(rewrite.Segment{Src: c, Dst: tProd, Seq: isn + 1, Ack: tProdISN + 1, Flags: fACK, Window: 502})
	s.feed(rewrite.Segment{Src: c, Dst: tProd, Seq: isn + 1, Ack: tProdISN + 1, Flags: fACK | fPSH, Window: 502, Payload: []byte(req)})
	s.feed(rewrite.Segment{Src: tProd, Dst: c, Seq: tProdISN + 1, Ack: isn + 1 + uint32(len(req)), Flags: fACK, Window: 1000})
}

// TestScenario44MultiplyNeverCollides: 50 clients, several on the same
// port, each connection copied 20 times by each of two daemons sharing a
// small pool through its slots, then every port reused by a new
// connection: every copy registers a flow of its own (none twice, on
// either daemon or across them) and each sends the request once, from
// the forged tuple it registered.
func TestScenario44MultiplyNeverCollides(t *testing.T) {
	const clients, n = 50, 20
	base, err := rewrite.NewPool([]netip.Prefix{netip.MustParsePrefix("198.19.0.0/26")}, 3)
	if err != nil {
		t.Fatal(err)
	}
	table := &flowTable{t: t, live: make(map[rewrite.Tuple]bool)}
	var daemons []*stepped
	var outs []*dataSender
	for slot := 0; slot < 2; slot++ {
		pool, err := base.WithSlot(slot, 2)
		if err != nil {
			t.Fatal(err)
		}
		out := &dataSender{bySrc: make(map[netip.AddrPort]int)}
		cfg := Config{NoPacing: true, Maps: []Map{{Local: tProd, Target: tShadow}}, Pool: pool, Seed: uint64(slot),
			Controls: Controls{Multiply: n}}
		daemons, outs = append(daemons, newStepped(t, cfg, 3, table, out)), append(outs, out)
	}
	client := func(i int) netip.AddrPort { // ten ports shared by the 50 clients
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(2 + i)}), uint16(40000+i%10))
	}
	for round, isn := range []uint32{tISN, tISN + 1e6} { // the second reuses every port
		for i := 0; i < clients; i++ {
			for _, d := range daemons {
				d.connect(client(i), isn, "GET / HTTP/1.1\r\n\r\n")
			}
		}
		if want := 2 * clients * n * (round + 1); table.total != want {
			t.Fatalf("round %d: %d flows registered, want %d", round, table.total, want)
		}
	}
	for d, out := range outs {
		// Each copy has its own session: the data of each connection goes
		// once from each of its n forged tuples.
		total := 0
		for src, k := range out.bySrc {
			total += k
			if k > 2 { // a tuple reused by the second round's connection at most
				t.Errorf("daemon %d: %d requests from %v", d, k, src)
			}
		}
		if total != 2*clients*n {
			t.Errorf("daemon %d: %d requests sent, want %d", d, total, 2*clients*n)
		}
		st := daemons[d].e.Stats()
		if st.Get(CtrSessionsStarted) != 2*clients*n || st.Get(CtrShedPorts) != 0 {
			t.Errorf("daemon %d: %d sessions started, %d shed for ports", d, st.Get(CtrSessionsStarted), st.Get(CtrShedPorts))
		}
	}
}

// TestScenario44CopiesOfOneConnectionUseDistinctAddresses: the copies of
// one client's connection come from distinct pool addresses while the
// pool holds more than the copies, and their budgets count each copy.
func TestScenario44CopiesOfOneConnectionUseDistinctAddresses(t *testing.T) {
	pool, _ := rewrite.NewPool([]netip.Prefix{tPool}, 0)
	table := &flowTable{t: t, live: make(map[rewrite.Tuple]bool)}
	s := newStepped(t, Config{Maps: []Map{{Local: tProd, Target: tShadow}}, Pool: pool, Controls: Controls{Multiply: 100}}, 2, table, &dataSender{bySrc: make(map[netip.AddrPort]int)})
	s.connect(tClient, tISN, "GET / HTTP/1.1\r\n\r\n")
	addrs := make(map[netip.Addr]bool)
	for f := range table.live {
		addrs[f.SrcAddrPort().Addr()] = true
	}
	if len(table.live) != 100 || len(addrs) != 100 {
		t.Errorf("%d flows from %d addresses, want 100 from 100", len(table.live), len(addrs))
	}
	st := s.e.Stats()
	if st.Active != 100 || st.Buffered < 100*int64(bufClasses[0]) {
		t.Errorf("%d sessions, %d bytes buffered: every copy counts", st.Active, st.Buffered)
	}
}

// TestScenario43SampleAtTheInput: through the engine, at 30% the
// connections left out cost no copy (their packets, prod's included, are
// dropped at the Input, counted) and those chosen are copied whole.
func TestScenario43SampleAtTheInput(t *testing.T) {
	pool, _ := rewrite.NewPool([]netip.Prefix{tPool}, 0)
	table := &flowTable{t: t, live: make(map[rewrite.Tuple]bool)}
	out := &dataSender{bySrc: make(map[netip.AddrPort]int)}
	s := newStepped(t, Config{Maps: []Map{{Local: tProd, Target: tShadow}}, Pool: pool, Controls: Controls{Sample: 0.3, SampleSeed: 9}}, 2, table, out)
	const n = 3000
	for i := 0; i < n; i++ {
		s.connect(clientN(i), tISN, "GET / HTTP/1.1\r\n\r\n")
	}
	st := s.e.Stats()
	copied := table.total
	if d := math.Abs(float64(copied) - 0.3*n); d > 3*math.Sqrt(n*0.3*0.7) {
		t.Errorf("%d of %d copied, want 30%% within 3σ", copied, n)
	}
	if got := st.Get(CtrSkippedSample); int(got) != n-copied {
		t.Errorf("sessions_skipped_sample %d, want %d", got, n-copied)
	}
	// Five packets per connection left out, two of them prod's.
	if got := st.Get(CtrIgnoredSkipped); int(got) != 5*(n-copied) {
		t.Errorf("ignored_skipped %d, want %d", got, 5*(n-copied))
	}
	if len(out.bySrc) != copied {
		t.Errorf("requests from %d forged tuples, want one from each of the %d copied", len(out.bySrc), copied)
	}
}

// TestScenario47TargetsSplitByFlowHash: a map with two targets sends
// each session, and each copy, to one of them, about half to each; prod's
// packets follow their session's target.
func TestScenario47TargetsSplitByFlowHash(t *testing.T) {
	pool, _ := rewrite.NewPool([]netip.Prefix{tPool}, 0)
	table := &flowTable{t: t, live: make(map[rewrite.Tuple]bool)}
	other := netip.MustParseAddrPort("198.18.1.3:8080")
	maps := []Map{{Local: tProd, Target: tShadow, Share: 0, Of: 2}, {Local: tProd, Target: other, Share: 1, Of: 2}}
	out := &dataSender{bySrc: make(map[netip.AddrPort]int)}
	s := newStepped(t, Config{Maps: maps, Pool: pool, Controls: Controls{Multiply: 2}}, 2, table, out)
	const n = 1000
	for i := 0; i < n; i++ {
		s.connect(clientN(i), tISN, "GET / HTTP/1.1\r\n\r\n")
	}
	byTarget := map[netip.AddrPort]int{}
	for f := range table.live {
		byTarget[f.DstAddrPort()]++
	}
	if table.total != 2*n || byTarget[tShadow]+byTarget[other] != 2*n {
		t.Fatalf("%d flows, by target %v: want %d, each to one target", table.total, byTarget, 2*n)
	}
	if d := math.Abs(float64(byTarget[tShadow]) - n); d > 3*math.Sqrt(2*n*0.25) {
		t.Errorf("by target %v: want about half each", byTarget)
	}
	// Every session was accepted by prod (its packets reached the same
	// worker and map) and sent its request.
	if len(out.bySrc) != 2*n {
		t.Errorf("requests from %d forged tuples, want %d", len(out.bySrc), 2*n)
	}
}

// TestEngineDispatchMultiplyZeroAllocs: fanning a packet out to ten
// copies over two targets allocates nothing.
func TestEngineDispatchMultiplyZeroAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop buffers")
	}
	pool, _ := rewrite.NewPool([]netip.Prefix{tPool}, 0)
	other := netip.MustParseAddrPort("198.18.1.3:8080")
	cfg := Config{Maps: []Map{{Local: tProd, Target: tShadow, Of: 2}, {Local: tProd, Target: other, Share: 1, Of: 2}},
		Pool: pool, Controls: Controls{Multiply: 10, Sample: 1}}
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
	queued := 0
	run := func() {
		e.HandleCaptured(pkt, ts)
		for _, l := range e.loops {
			for len(l.pkts) > 0 {
				(<-l.pkts).pb.free()
				queued++
			}
		}
	}
	for i := 0; i < 100; i++ {
		run()
	}
	queued = 0
	if allocs := testing.AllocsPerRun(1000, run); allocs != 0 {
		t.Fatalf("dispatch to ten copies allocates %v times per packet", allocs)
	}
	if queued != 1001*10 {
		t.Fatalf("%d copies queued for 1001 packets, want ten each", queued)
	}
}
