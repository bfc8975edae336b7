package capture

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/lab"
	"golang.org/x/sys/unix"
)

// openIn opens a live capture inside ns, closed when the test ends.
func openIn(t *testing.T, ns *lab.NS, cfg Config) *tpacketSource {
	t.Helper()
	var src Source
	if err := ns.Do(func() error {
		var err error
		src, err = OpenLive(cfg)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src.(*tpacketSource)
}

// sendUDP sends n datagrams from ns to dst, where a socket in to takes
// them (so no ICMP error fails a write), bounded by a deadline.
func sendUDP(t *testing.T, ns, to *lab.NS, dst string, n int) {
	t.Helper()
	var sink net.PacketConn
	if err := to.Do(func() error {
		var err error
		sink, err = net.ListenPacket("udp", dst)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := ns.DialContext(ctx, "udp", dst)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for i := range n {
		if _, err := fmt.Fprintf(conn, "datagram %06d", i); err != nil {
			t.Fatal(err)
		}
	}
}

// drain reads until the source has been idle for a read timeout, and
// returns the packets' payloads after their IP and UDP headers.
func drain(t *testing.T, src Source) []string {
	t.Helper()
	var got []string
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		pkt, _, err := src.Read()
		if errors.Is(err, ErrTimeout) {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		hdr := 20
		if pkt[0]>>4 == 6 {
			hdr = 40
		}
		got = append(got, string(pkt[hdr+8:]))
	}
	t.Fatal("capture never idled")
	return nil
}

// TestLiveDirection checks that InboundOnly and OutboundOnly each get
// their direction of a link's traffic, and no more: prod's datagrams to
// the shadow leave by prod's segment link, the shadow's to prod arrive
// on it.
func TestLiveDirection(t *testing.T) {
	l := lab.NewT(t, lab.Config{})
	const filter = "udp and port 4999"
	out := openIn(t, l.Prod, Config{Interface: lab.ProdSegmentLink, Filter: filter, OutboundOnly: true})
	in := openIn(t, l.Prod, Config{Interface: lab.ProdSegmentLink, Filter: filter, InboundOnly: true})
	both := openIn(t, l.Prod, Config{Interface: lab.ProdSegmentLink, Filter: filter})
	sendUDP(t, l.Prod, l.Shadow, net.JoinHostPort(lab.ShadowV4.String(), "4999"), 30)
	sendUDP(t, l.Shadow, l.Prod, net.JoinHostPort(lab.ProdV4.String(), "4999"), 20)
	if got := len(drain(t, out)); got != 30 {
		t.Errorf("outbound only: %d packets, want prod's 30", got)
	}
	if got := len(drain(t, in)); got != 20 {
		t.Errorf("inbound only: %d packets, want the shadow's 20", got)
	}
	if got := len(drain(t, both)); got != 50 {
		t.Errorf("both ways: %d packets, want 50", got)
	}
}

// TestLiveOutboundInSameRing checks Config.Outbound: one ring takes the
// inbound packets its filter selects, whole, and the outbound ones the
// outbound filter selects, cut at the outbound snap length, and nothing
// else of either direction.
func TestLiveOutboundInSameRing(t *testing.T) {
	l := lab.NewT(t, lab.Config{})
	src := openIn(t, l.Prod, Config{Interface: lab.ProdSegmentLink, Filter: "udp and dst port 4999", InboundOnly: true, SnapLen: 1024,
		Outbound: Outbound{Filter: "udp and dst port 4998", SnapLen: 32}})
	sendUDP(t, l.Prod, l.Shadow, net.JoinHostPort(lab.ShadowV4.String(), "4998"), 30) // out, taken: cut
	sendUDP(t, l.Prod, l.Shadow, net.JoinHostPort(lab.ShadowV4.String(), "4999"), 10) // out, not the outbound filter's
	sendUDP(t, l.Shadow, l.Prod, net.JoinHostPort(lab.ProdV4.String(), "4999"), 20)   // in, taken: whole
	sendUDP(t, l.Shadow, l.Prod, net.JoinHostPort(lab.ProdV4.String(), "4998"), 5)    // in, not the inbound filter's
	var cut, whole int
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		pkt, _, err := src.Read()
		if errors.Is(err, ErrTimeout) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		switch dst := int(pkt[22])<<8 | int(pkt[23]); {
		case dst == 4998 && len(pkt) == 32:
			cut++
		case dst == 4999 && len(pkt) == 28+len("datagram 000000") && string(pkt[28:]) == fmt.Sprintf("datagram %06d", whole):
			whole++
		default:
			t.Fatalf("unexpected packet to port %d, %d bytes: % x", dst, len(pkt), pkt)
		}
	}
	if cut != 30 || whole != 20 {
		t.Errorf("%d outbound packets cut and %d inbound whole, want 30 and 20", cut, whole)
	}
	for _, bad := range []Outbound{{Filter: "udp", SnapLen: 0}, {Filter: "udp", SnapLen: 2048}} {
		if _, err := OpenLive(Config{Interface: "lo", InboundOnly: true, SnapLen: 1024, Outbound: bad}); err == nil {
			t.Errorf("outbound %+v: no error", bad)
		}
	}
	if _, err := OpenLive(Config{Interface: "lo", Outbound: Outbound{Filter: "udp", SnapLen: 100}}); err == nil {
		t.Error("outbound on a capture of both directions: no error")
	}
}

// TestLiveIPv6AndAny checks that IPv6 packets come whole, and that
// interface "any" captures every link.
func TestLiveIPv6AndAny(t *testing.T) {
	l := lab.NewT(t, lab.Config{})
	src := openIn(t, l.Shadow, Config{Interface: "any", Filter: "udp and dst port 4999", InboundOnly: true})
	sendUDP(t, l.Prod, l.Shadow, net.JoinHostPort(lab.ShadowV6.String(), "4999"), 10)
	got := drain(t, src)
	if len(got) != 10 {
		t.Fatalf("%d packets on any, want 10", len(got))
	}
	for i, p := range got {
		if want := fmt.Sprintf("datagram %06d", i); p != want {
			t.Fatalf("packet %d carries %q, want %q", i, p, want)
		}
	}
}

// TestLiveCountsKernelDrops fills a two-block ring without reading it:
// the kernel drops what does not fit and Stats counts it, so that what
// was read and what was dropped add up to what the kernel received.
func TestLiveCountsKernelDrops(t *testing.T) {
	l := lab.NewT(t, lab.Config{})
	src := openIn(t, l.Shadow, Config{Interface: lab.HostLink, Filter: "udp and dst port 4999", InboundOnly: true,
		SnapLen: 1024, BufferSize: 1, Timeout: time.Second})
	if src.r.blocks != 2 {
		t.Fatalf("ring of %d blocks, want the minimum 2", src.r.blocks)
	}
	const n = 20000 // far more than two 64 KiB blocks hold
	sendUDP(t, l.Prod, l.Shadow, net.JoinHostPort(lab.ShadowV4.String(), "4999"), n)
	read := len(drain(t, src))
	st := src.Stats()
	if st.KernelDropped == 0 {
		t.Fatalf("stats %+v after %d sent to a two-block ring: no drop counted", st, n)
	}
	if uint64(read) != st.Read || st.Read+st.KernelDropped != st.KernelRecv {
		t.Errorf("read %d, stats %+v: read and dropped do not add up to received", read, st)
	}
	if again := src.Stats(); again.KernelRecv != st.KernelRecv || again.KernelDropped != st.KernelDropped {
		t.Errorf("stats changed with no traffic: %+v then %+v (the kernel's reset counters must be summed)", st, again)
	}
}

func TestRingFilter(t *testing.T) {
	for _, tc := range []struct {
		cfg    Config
		jt, jf uint8
	}{
		{Config{SnapLen: 256, InboundOnly: true}, 0, 1},
		{Config{SnapLen: 256, OutboundOnly: true}, 1, 0},
	} {
		prog, err := ringFilter(tc.cfg)
		if err != nil {
			t.Fatal(err)
		}
		if prog[0].K != skfAdPktType || prog[1].K != packetOutgoing || prog[1].Jt != tc.jt || prog[1].Jf != tc.jf ||
			prog[2].Code != unix.BPF_RET|unix.BPF_K || prog[2].K != 0 {
			t.Errorf("%+v: direction test %+v", tc.cfg, prog[:3])
		}
		if last := prog[len(prog)-1]; last.K != 256 {
			t.Errorf("%+v: program ends %+v, want a return of the snap length", tc.cfg, last)
		}
	}
	if prog, err := ringFilter(Config{SnapLen: 256}); err != nil || len(prog) != 1 {
		t.Errorf("no filter, both ways: %+v, %v; want one return", prog, err)
	}
	if _, err := ringFilter(Config{SnapLen: 256, Filter: "tcp and prt 80"}); err == nil || !strings.Contains(err.Error(), "tcp and prt 80") {
		t.Errorf("bad filter: %v, want an error naming it", err)
	}
}

func TestOpenLiveErrors(t *testing.T) {
	if _, err := OpenLive(Config{Interface: "no-such-if0"}); err == nil || !strings.Contains(err.Error(), "no-such-if0") {
		t.Errorf("missing interface: %v, want an error naming it", err)
	}
	if _, err := OpenLive(Config{Interface: "lo", InboundOnly: true, OutboundOnly: true}); err == nil {
		t.Error("inbound and outbound only at once: no error")
	}
}

// TestLiveRingGrows reads a stream of numbered datagrams into a ring that
// starts at four blocks and is asked to hold two seconds of the rate: it
// must grow while packets arrive, and the reader must get
// every datagram the kernel did not drop exactly once and in order, none
// twice across the switches.
func TestLiveRingGrows(t *testing.T) {
	l := lab.NewT(t, lab.Config{})
	src := openIn(t, l.Shadow, Config{Interface: lab.HostLink, Filter: "udp and dst port 4999", InboundOnly: true,
		SnapLen: 1024, InitialBufferSize: 256 << 10, BufferSize: 16 << 20, Hold: 2 * time.Second})
	if st := src.Stats(); st.RingBytes != 256<<10 {
		t.Fatalf("ring of %d bytes at open, want 256 KiB", st.RingBytes)
	}
	var sink net.PacketConn
	if err := l.Shadow.Do(func() error {
		var err error
		sink, err = net.ListenPacket("udp", net.JoinHostPort(lab.ShadowV4.String(), "4999"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	const n = 40000
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		conn, err := l.Prod.DialContext(ctx, "udp", net.JoinHostPort(lab.ShadowV4.String(), "4999"))
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		for i := range n {
			if _, err := fmt.Fprintf(conn, "datagram %06d", i); err != nil {
				t.Error(err)
				return
			}
			if i%200 == 199 {
				time.Sleep(time.Millisecond) // a steady stream, not one burst
			}
		}
	}()
	last, read := -1, 0
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		pkt, _, err := src.Read()
		if errors.Is(err, ErrTimeout) {
			select {
			case <-sent:
				goto done
			default:
				continue
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		var i int
		if _, err := fmt.Sscanf(string(pkt[28:]), "datagram %d", &i); err != nil {
			t.Fatalf("packet % x: %v", pkt, err)
		}
		if i <= last {
			t.Fatalf("datagram %d after %d: read twice or out of order", i, last)
		}
		last = i
		read++
	}
	t.Fatal("the stream did not end")
done:
	st := src.Stats()
	t.Logf("read %d of %d; stats %+v", read, n, st)
	if st.RingGrown == 0 || st.RingBytes <= 1<<20 {
		t.Errorf("ring grew %d times to %d bytes, want past 1 MiB", st.RingGrown, st.RingBytes)
	}
	if st.RingBytes > 16<<20 {
		t.Errorf("ring of %d bytes, past BufferSize", st.RingBytes)
	}
	if uint64(read)+st.KernelDropped < n || uint64(read) > n {
		t.Errorf("read %d and the kernel dropped %d of %d sent", read, st.KernelDropped, n)
	}
}

func TestCheckCut(t *testing.T) {
	s := &tpacketSource{cfg: Config{SnapLen: 4096, Outbound: Outbound{Filter: "tcp", SnapLen: 256}}}
	for _, tc := range []struct {
		snap, wire int
		pt         byte
		cut        bool
	}{
		{1500, 1500, 0, false}, // whole
		{4096, 9000, 0, false}, // cut by the filter's snap length
		{3000, 9000, 0, true},  // cut shorter: by the ring's block
		{256, 1500, packetOutgoing, false},
		{200, 1500, packetOutgoing, true},
	} {
		s.grow.cutSeen = false
		s.checkCut(tc.snap, tc.wire, tc.pt)
		if s.grow.cutSeen != tc.cut {
			t.Errorf("%+v: cut %v", tc, s.grow.cutSeen)
		}
	}
}

func TestRingBlockSize(t *testing.T) {
	for _, tc := range []struct{ size, snap, want int }{
		{64 << 20, MaxSnapLen, 512 << 10}, // 128 blocks
		{32 << 20, MaxSnapLen, 512 << 10}, // 64 blocks
		{8 << 20, MaxSnapLen, 128 << 10},  // 64 small blocks
		{256 << 10, MaxSnapLen, 128 << 10},
		{8 << 20, 512, 64 << 10},
	} {
		if got := ringBlockSize(tc.size, tc.snap); got != tc.want {
			t.Errorf("ringBlockSize(%d, %d) = %d, want %d", tc.size, tc.snap, got, tc.want)
		}
	}
	// The default start holds 64 of the largest packets, in full blocks.
	if got := StartFor(MaxSnapLen); got != 32<<20 || ringBlockSize(got, MaxSnapLen) != 512<<10 {
		t.Errorf("StartFor(%d) = %d, want 32 MiB of 512 KiB blocks", MaxSnapLen, got)
	}
	if got := StartFor(512); got != 4<<20 {
		t.Errorf("StartFor(512) = %d, want 4 MiB", got)
	}
}
