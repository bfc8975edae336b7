package tunnelsock

import (
	"bytes"
	"context"
	"crypto/sha256"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/intercept/tunnel"
	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

var (
	pool   = netip.MustParsePrefix("198.19.0.0/16")
	pool6  = netip.MustParsePrefix("2001:2:0:ff::/64")
	shadow = netip.MustParseAddr("198.18.1.2")
	shad6  = netip.MustParseAddr("2001:2:0:1::2")
)

// sink is an Injector that keeps copies of what it is given.
type sink struct {
	mu   sync.Mutex
	pkts [][]byte
	keep bool
}

func (s *sink) Send(p []byte) error {
	if s.keep {
		s.mu.Lock()
		s.pkts = append(s.pkts, bytes.Clone(p))
		s.mu.Unlock()
	}
	return nil
}
func (s *sink) Flush() (int, error) { return 0, nil }
func (s *sink) got() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.pkts...)
}

// keys returns the two ends of one control-channel session.
func keys(t testing.TB, name string) (*tunnel.Sealer, *tunnel.Peer) {
	t.Helper()
	tr := sha256.Sum256([]byte(name))
	cs, co, err := tunnel.Keys([]byte("secret"), tr, wire.RoleCopier)
	if err != nil {
		t.Fatal(err)
	}
	as, ao, err := tunnel.Keys([]byte("secret"), tr, wire.RoleAgent)
	if err != nil {
		t.Fatal(err)
	}
	_ = co
	return cs, &tunnel.Peer{Open: ao, Seal: as, Pools: []netip.Prefix{pool, pool6}}
}

func segment(t testing.TB, src, dst netip.AddrPort, payload int) []byte {
	t.Helper()
	s := rewrite.Segment{Src: src, Dst: dst, Seq: 1, Ack: 1, Flags: rewrite.FlagACK, Window: 100, Payload: make([]byte, payload)}
	b := make([]byte, s.Len())
	n, err := s.Put(b)
	if err != nil {
		t.Fatal(err)
	}
	return b[:n]
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// rig is a receiver on loopback with a sink, and a link to it.
type rig struct {
	r    *Receiver
	in   *sink
	link *Link
	peer *tunnel.Peer
	stop func()
}

func newRig(t *testing.T) *rig {
	t.Helper()
	tab := tunnel.NewTable()
	in := &sink{keep: true}
	r, err := Listen(ap("127.0.0.1:0"), tab, in)
	if err != nil {
		t.Fatal(err)
	}
	r.localAddrs = func() []netip.Addr { return []netip.Addr{shadow, shad6} }
	seal, peer := keys(t, t.Name())
	tab.Add(peer)
	link := &Link{Dst: r.Addr()}
	link.Keys.Store(seal)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	stop := func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(func() {
		if ctx.Err() == nil {
			stop()
		}
	})
	return &rig{r: r, in: in, link: link, peer: peer, stop: stop}
}

// waitStats waits, bounded, until the receiver has read n datagrams.
func (g *rig) waitStats(t *testing.T, n uint64) RecvStats {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := g.r.Stats()
		if st.Received >= n || time.Now().After(deadline) {
			time.Sleep(20 * time.Millisecond) // and nothing more
			return g.r.Stats()
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSendReceive(t *testing.T) {
	g := newRig(t)
	s, err := Open(g.link)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var want [][]byte
	for i := range 150 { // more than a batch: one flush on the way
		p := segment(t, ap("198.19.3.4:40000"), ap("198.18.1.2:80"), i*10)
		if i%2 == 1 {
			p = segment(t, ap("[2001:2:0:ff::9]:40000"), ap("[2001:2:0:1::2]:80"), i*10)
		}
		want = append(want, p)
		if err := s.Send(p); err != nil {
			t.Fatal(err)
		}
	}
	big := segment(t, ap("198.19.3.4:40000"), ap("198.18.1.2:80"), 4000) // past a slot: sent at once
	want = append(want, big)
	if err := s.Send(big); err != nil {
		t.Fatal(err)
	}
	if failed, err := s.Flush(); failed != 0 {
		t.Fatalf("%d failed: %v", failed, err)
	}
	st := g.waitStats(t, uint64(len(want)))
	got := g.in.got()
	if len(got) != len(want) || st.Injected != uint64(len(want)) {
		t.Fatalf("injected %d (counted %d) of %d: %+v", len(got), st.Injected, len(want), st)
	}
	seen := map[string]bool{}
	for _, p := range got {
		seen[string(p)] = true
	}
	for i, p := range want {
		if !seen[string(p)] {
			t.Fatalf("packet %d not injected as sent", i)
		}
	}
	if ls := g.link.Stats(); ls.Sent != uint64(len(want)) || ls.Failed != 0 {
		t.Fatalf("link stats %+v", ls)
	}
}

func TestRefusals(t *testing.T) {
	g := newRig(t)
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(g.r.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	seal := g.link.Keys.Load()
	good := segment(t, ap("198.19.3.4:40000"), ap("198.18.1.2:80"), 100)
	sealed := func(p []byte) []byte { return seal.Seal(make([]byte, len(p)+tunnel.Overhead), tunnel.TypePacket, p) }
	genuine := sealed(good)
	badMAC := bytes.Clone(sealed(good))
	badMAC[tunnel.HeaderLen+5] ^= 1
	otherSeal, _ := keys(t, "a session the agent never saw")
	send := [][]byte{
		genuine,
		bytes.Clone(genuine), // replayed
		badMAC,
		[]byte("GET / HTTP/1.1\r\n\r\n"), // garbage
		make([]byte, tunnel.Overhead),    // zeros: version 0
		make([]byte, tunnel.MaxDatagram+100),
		otherSeal.Seal(make([]byte, len(good)+tunnel.Overhead), tunnel.TypePacket, good),
		sealed(segment(t, ap("198.18.9.9:40000"), ap("198.18.1.2:80"), 10)), // not from the pool
		sealed(segment(t, ap("198.19.3.4:40000"), ap("198.18.7.7:80"), 10)), // not to this host
		sealed([]byte("not an ip packet, though sealed correctly")),
	}
	for _, d := range send {
		if _, err := conn.Write(d); err != nil {
			t.Fatal(err)
		}
	}
	st := g.waitStats(t, uint64(len(send)))
	want := RecvStats{Received: uint64(len(send)), Injected: 1, Replayed: 1, BadMAC: 1, Malformed: 2, TooBig: 1, NoSession: 1, Refused: 3}
	if st != want {
		t.Fatalf("stats\n got %+v\nwant %+v", st, want)
	}
	if got := g.in.got(); len(got) != 1 || !bytes.Equal(got[0], good) {
		t.Fatalf("injected %d packets, want the genuine one only", len(got))
	}
}

func TestProbe(t *testing.T) {
	g := newRig(t)
	seal := g.link.Keys.Load()
	tr := sha256.Sum256([]byte(t.Name()))
	_, open, err := tunnel.Keys([]byte("secret"), tr, wire.RoleCopier)
	if err != nil {
		t.Fatal(err)
	}
	if err := Ping(context.Background(), g.r.Addr(), seal, open, 5*time.Second); err != nil {
		t.Fatalf("ping: %v", err)
	}
	if st := g.r.Stats(); st.Probes != 1 || st.Injected != 0 {
		t.Fatalf("stats %+v", st)
	}
	// A session the agent does not hold gets no answer.
	other, _ := keys(t, "another session")
	_, otherOpen, _ := tunnel.Keys([]byte("secret"), sha256.Sum256([]byte("another session")), wire.RoleCopier)
	if err := Ping(context.Background(), g.r.Addr(), other, otherOpen, 300*time.Millisecond); err != ErrNoAck {
		t.Fatalf("ping of an unknown session: %v, want ErrNoAck", err)
	}
	// Nothing listening: refused or no answer, an error either way.
	g.stop()
	if err := Ping(context.Background(), g.r.Addr(), seal, open, 300*time.Millisecond); err == nil {
		t.Fatal("ping answered with the receiver closed")
	}
}

func TestNoSession(t *testing.T) {
	l := &Link{Dst: ap("127.0.0.1:9")}
	s, err := Open(l)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Send(make([]byte, 60)); err != ErrNoSession {
		t.Fatalf("send without a session: %v", err)
	}
	seal, _ := keys(t, "big")
	l.Keys.Store(seal)
	if err := s.Send(make([]byte, tunnel.MaxInner+1)); err != ErrTooBig {
		t.Fatalf("send too big: %v", err)
	}
	if st := l.Stats(); st.NoSession != 1 || st.TooBig != 1 || st.Sent != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestAllocs proves both ends allocate nothing per datagram: a worker's
// Send and Flush, and the receiver's handling of a batch.
func TestAllocs(t *testing.T) {
	tab := tunnel.NewTable()
	r := newReceiver(tab, &sink{})
	r.localAddrs = func() []netip.Addr { return []netip.Addr{shadow} }
	r.refreshLocal(time.Now())
	seal, peer := keys(t, "allocs")
	tab.Add(peer)
	// The sender, to a socket nobody reads (datagrams are dropped there).
	dst, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	l := &Link{Dst: dst.LocalAddr().(*net.UDPAddr).AddrPort()}
	l.Keys.Store(seal)
	s, err := Open(l)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	pkt := segment(t, ap("198.19.3.4:40000"), ap("198.18.1.2:80"), 1400)
	if n := testing.AllocsPerRun(200, func() {
		for range 8 {
			_ = s.Send(pkt)
		}
		_, _ = s.Flush()
	}); n != 0 {
		t.Fatalf("sender: %v allocations per batch", n)
	}
	batch := 8
	if n := testing.AllocsPerRun(200, func() {
		for i := range batch {
			d := seal.Seal(r.bufs[i][:], tunnel.TypePacket, pkt)
			r.msgs[i].Len = uint32(len(d))
			r.msgs[i].Hdr.Flags = 0
		}
		r.handle(batch)
	}); n != 0 {
		t.Fatalf("receiver: %v allocations per batch", n)
	}
	if st := r.Stats(); st.Injected != uint64(201*batch) {
		t.Fatalf("receiver injected %d of %d", st.Injected, 201*batch)
	}
}

// FuzzReceive hands arbitrary datagrams to the receiver: nothing panics,
// and only a genuine datagram, once, is injected.
func FuzzReceive(f *testing.F) {
	seal, _ := keys(f, "fuzz")
	pkt := segment(f, ap("198.19.3.4:40000"), ap("198.18.1.2:80"), 10)
	f.Add(seal.Seal(make([]byte, len(pkt)+tunnel.Overhead), tunnel.TypePacket, pkt))
	f.Add(seal.Seal(make([]byte, 8+tunnel.Overhead), tunnel.TypeProbeAck, []byte("12345678")))
	f.Add([]byte{tunnel.Version, byte(tunnel.TypePacket), 0, 0})
	f.Fuzz(func(t *testing.T, d []byte) {
		tab := tunnel.NewTable()
		in := &sink{keep: true}
		r := newReceiver(tab, in)
		r.localAddrs = func() []netip.Addr { return []netip.Addr{shadow, shad6} }
		r.refreshLocal(time.Now())
		_, peer := keys(t, "fuzz")
		tab.Add(peer)
		if len(d) > tunnel.MaxDatagram {
			d = d[:tunnel.MaxDatagram]
		}
		for round := range 2 {
			n := copy(r.bufs[0][:], d)
			r.msgs[0].Len, r.msgs[0].Hdr.Flags = uint32(n), 0
			r.handle(1)
			st := r.Stats()
			if st.Injected > 1 || uint64(len(in.got())) != st.Injected {
				t.Fatalf("round %d: %+v", round, st)
			}
		}
	})
}

// BenchmarkReceiveBatch: the agent's work for a batch of 64 datagrams of
// 1400-byte packets, the read and the injection's system calls aside:
// parse, session lookup, open, checks, queueing to the injector.
func BenchmarkReceiveBatch(b *testing.B) {
	tab := tunnel.NewTable()
	r := newReceiver(tab, &sink{})
	r.localAddrs = func() []netip.Addr { return []netip.Addr{shadow} }
	r.refreshLocal(time.Now())
	seal, peer := keys(b, "bench")
	tab.Add(peer)
	pkt := segment(b, ap("198.19.3.4:40000"), ap("198.18.1.2:80"), 1400)
	b.SetBytes(int64(MaxBatch * len(pkt)))
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		for i := range MaxBatch {
			d := seal.Seal(r.bufs[i][:], tunnel.TypePacket, pkt)
			r.msgs[i].Len, r.msgs[i].Hdr.Flags = uint32(len(d)), 0
		}
		b.StartTimer()
		r.handle(MaxBatch)
	}
}
