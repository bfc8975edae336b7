package linksock_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/capture"
	"github.com/tcpshadow/tcpshadow/internal/lab"
	"github.com/tcpshadow/tcpshadow/internal/linksock"
	"github.com/tcpshadow/tcpshadow/internal/rawsock"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func build(t testing.TB, from, to netip.Addr, i int) []byte {
	seg := rewrite.Segment{
		Src: netip.AddrPortFrom(from, uint16(10000+i)), Dst: netip.AddrPortFrom(to, 4321),
		Seq: uint32(i), Flags: rewrite.FlagSYN, Window: 1,
	}
	pkt := make([]byte, seg.Len())
	if _, err := seg.Put(pkt); err != nil {
		t.Fatal(err)
	}
	return pkt
}

// outputDrop is an nftables table in prod dropping everything it sends
// to the shadow at OUTPUT: prod's own firewall.
const outputDrop = `table inet linksock {
	chain out {
		type filter hook output priority 0; policy accept;
		ip daddr 198.18.1.2 counter drop
		ip6 daddr 2001:2:0:1::2 counter drop
	}
}`

// TestDatalinkSkipsOutputRules: with prod's OUTPUT dropping everything to
// the shadow, raw IP sends fail, datalink sends arrive, IPv4 and IPv6,
// after resolving a next hop the neighbour table did not hold.
func TestDatalinkSkipsOutputRules(t *testing.T) {
	l := lab.NewT(t, lab.Config{})
	ctx := context.Background()
	cmd := l.Prod.Command(ctx, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(outputDrop)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	if out, err := l.Prod.Run(ctx, "ip", "neigh", "flush", "all"); err != nil {
		t.Fatalf("flush neighbours: %v: %s", err, out)
	}
	var src capture.Source
	if err := l.Shadow.Do(func() error {
		var err error
		src, err = capture.OpenLive(capture.Config{Interface: lab.HostLink, Filter: "tcp and dst port 4321", InboundOnly: true})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer src.Close()

	forged4, forged6 := netip.MustParseAddr("198.19.7.7"), netip.MustParseAddr("2001:2:0:ff::7")
	var raw *rawsock.Sender
	var res *linksock.Resolver
	var s *linksock.Sender
	if err := l.Prod.Do(func() error {
		var err error
		if raw, err = rawsock.Open(); err != nil {
			return err
		}
		if res, err = linksock.NewResolver([]netip.Addr{lab.ShadowV4, lab.ShadowV6}, 5*time.Second, quiet); err != nil {
			return err
		}
		s, err = linksock.Open(res)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	defer res.Close()
	defer s.Close()
	if st := res.Stats(); st.Resolutions == 0 {
		t.Errorf("no resolution asked with the neighbour table flushed: %+v", st)
	}
	if err := raw.Send(build(t, forged4, lab.ShadowV4, 0)); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("raw send through an OUTPUT drop: %v, want EPERM", err)
	}
	const n = 50
	for i := 1; i <= n; i++ {
		for _, p := range [][]byte{build(t, forged4, lab.ShadowV4, i), build(t, forged6, lab.ShadowV6, i)} {
			if err := s.Send(p); err != nil {
				t.Fatalf("datalink send %d: %v (stats %+v)", i, err, res.Stats())
			}
		}
	}
	got4, got6 := 0, 0
	deadline := time.Now().Add(5 * time.Second)
	for got4+got6 < 2*n && time.Now().Before(deadline) {
		pkt, _, err := src.Read()
		if errors.Is(err, capture.ErrTimeout) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		var p rewrite.Packet
		if err := p.DecodeHeader(pkt); err != nil {
			t.Fatalf("shadow captured a bad packet: %v", err)
		}
		switch p.SrcAddr() {
		case forged4:
			got4++
		case forged6:
			got6++
		}
	}
	if got4 != n || got6 != n {
		t.Fatalf("shadow captured %d IPv4 and %d IPv6 forged packets, want %d each", got4, got6, n)
	}
}

// TestDatalinkUnknownDestination: a packet to a destination the table
// lacks is refused and counted, and the resolver looks it up, so later
// packets go.
func TestDatalinkUnknownDestination(t *testing.T) {
	l := lab.NewT(t, lab.Config{})
	var res *linksock.Resolver
	var s *linksock.Sender
	if err := l.Prod.Do(func() error {
		var err error
		if res, err = linksock.NewResolver(nil, 0, quiet); err != nil {
			return err
		}
		s, err = linksock.Open(res)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); res.Run(ctx) }()
	defer func() { cancel(); <-done }()
	pkt := build(t, netip.MustParseAddr("198.19.7.7"), lab.ShadowV4, 1)
	if err := s.Send(pkt); !errors.Is(err, linksock.ErrNoRoute) {
		t.Fatalf("first send: %v, want ErrNoRoute", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	var err error
	for err = s.Send(pkt); err != nil && time.Now().Before(deadline); err = s.Send(pkt) {
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("send never succeeded: %v (stats %+v)", err, res.Stats())
	}
	if st := res.Stats(); st.NoRoute == 0 {
		t.Fatalf("refused packets not counted: %+v", st)
	}
}

// TestDatalinkSendZeroAlloc: a send to a resolved next hop allocates
// nothing, in both families.
func TestDatalinkSendZeroAlloc(t *testing.T) {
	l := lab.NewT(t, lab.Config{})
	var res *linksock.Resolver
	var s *linksock.Sender
	if err := l.Prod.Do(func() error {
		var err error
		if res, err = linksock.NewResolver([]netip.Addr{lab.ShadowV4, lab.ShadowV6}, 5*time.Second, quiet); err != nil {
			return err
		}
		s, err = linksock.Open(res)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	defer s.Close()
	for name, pkt := range map[string][]byte{
		"ipv4": build(t, netip.MustParseAddr("198.19.7.7"), lab.ShadowV4, 1),
		"ipv6": build(t, netip.MustParseAddr("2001:2:0:ff::7"), lab.ShadowV6, 1),
	} {
		t.Run(name, func(t *testing.T) {
			if n := testing.AllocsPerRun(200, func() {
				if err := s.Send(pkt); err != nil {
					t.Fatal(err)
				}
			}); n != 0 {
				t.Fatalf("%v allocations per send", n)
			}
		})
	}
}

// TestDatalinkBatchDelivers: packets queued in a batch, more than two
// batches' worth in each family, all reach the shadow; queuing and
// flushing allocate nothing.
func TestDatalinkBatchDelivers(t *testing.T) {
	l := lab.NewT(t, lab.Config{})
	var src capture.Source
	if err := l.Shadow.Do(func() error {
		var err error
		src, err = capture.OpenLive(capture.Config{Interface: lab.HostLink, Filter: "tcp and dst port 4321", InboundOnly: true})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var res *linksock.Resolver
	var s *linksock.Sender
	if err := l.Prod.Do(func() error {
		var err error
		if res, err = linksock.NewResolver([]netip.Addr{lab.ShadowV4, lab.ShadowV6}, 5*time.Second, quiet); err != nil {
			return err
		}
		s, err = linksock.Open(res)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	defer s.Close()
	b := linksock.NewBatch(s)
	forged4, forged6 := netip.MustParseAddr("198.19.7.8"), netip.MustParseAddr("2001:2:0:ff::8")
	const n = 150
	for i := range n {
		for _, p := range [][]byte{build(t, forged4, lab.ShadowV4, i), build(t, forged6, lab.ShadowV6, i)} {
			if err := b.Send(p); err != nil {
				t.Fatal(err)
			}
		}
	}
	if failed, err := b.Flush(); failed != 0 {
		t.Fatalf("%d packets refused: %v", failed, err)
	}
	got := map[netip.Addr]int{}
	deadline := time.Now().Add(5 * time.Second)
	for got[forged4]+got[forged6] < 2*n && time.Now().Before(deadline) {
		pkt, _, err := src.Read()
		if errors.Is(err, capture.ErrTimeout) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		var p rewrite.Packet
		if err := p.DecodeHeader(pkt); err != nil {
			t.Fatal(err)
		}
		got[p.SrcAddr()]++
	}
	if got[forged4] != n || got[forged6] != n {
		t.Fatalf("shadow captured %d IPv4 and %d IPv6 packets, want %d each", got[forged4], got[forged6], n)
	}
	pkt := build(t, forged4, lab.ShadowV4, 1)
	if a := testing.AllocsPerRun(100, func() {
		_ = b.Send(pkt)
		_, _ = b.Flush()
	}); a != 0 {
		t.Fatalf("%v allocations per send and flush", a)
	}
	// A destination without a next hop is refused at once, not queued.
	if err := b.Send(build(t, forged4, netip.MustParseAddr("198.18.1.99"), 1)); !errors.Is(err, linksock.ErrNoRoute) {
		t.Fatalf("send to an unknown destination: %v, want ErrNoRoute", err)
	}
}
