package rawsock_test

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/capture"
	"github.com/tcpshadow/tcpshadow/internal/lab"
	"github.com/tcpshadow/tcpshadow/internal/rawsock"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// TestBatchDeliversForgedPackets sends packets with forged pool sources
// from prod through a batch, and captures them on the shadow.
func TestBatchDeliversForgedPackets(t *testing.T) {
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

	var s *rawsock.Sender
	if err := l.Prod.Do(func() error {
		var err error
		s, err = rawsock.Open()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b := rawsock.NewBatch(s)

	const n = 150 // more than two batches
	build := func(from, to netip.Addr, i int, size int) []byte {
		seg := rewrite.Segment{
			Src: netip.AddrPortFrom(from, uint16(10000+i)), Dst: netip.AddrPortFrom(to, 4321),
			Seq: uint32(i), Flags: rewrite.FlagSYN, Window: 1, Payload: make([]byte, size),
		}
		pkt := make([]byte, seg.Len())
		if _, err := seg.Put(pkt); err != nil {
			t.Fatal(err)
		}
		return pkt
	}
	forged4 := netip.MustParseAddr("198.19.7.7")
	forged6 := netip.MustParseAddr("2001:2:0:ff::7")
	for i := 0; i < n; i++ {
		if err := b.Send(build(forged4, lab.ShadowV4, i, 0)); err != nil {
			t.Fatal(err)
		}
		if err := b.Send(build(forged6, lab.ShadowV6, i, 0)); err != nil {
			t.Fatal(err)
		}
	}
	// Larger than the link MTU: refused by the kernel, counted, the rest goes.
	if err := b.Send(build(forged4, lab.ShadowV4, n, 1600)); err != nil {
		t.Fatal(err)
	}
	if err := b.Send(build(forged4, lab.ShadowV4, n+1, 0)); err != nil {
		t.Fatal(err)
	}
	failed, err := b.Flush()
	if failed != 1 || err == nil {
		t.Fatalf("Flush: %d failed (%v), want the oversized packet refused", failed, err)
	}

	got4, got6 := 0, 0
	deadline := time.Now().Add(5 * time.Second)
	for got4+got6 < 2*n+1 && time.Now().Before(deadline) {
		pkt, _, err := src.Read()
		if errors.Is(err, capture.ErrTimeout) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		var p rewrite.Packet
		if p.Decode(pkt) != nil {
			continue
		}
		switch p.SrcAddr() {
		case forged4:
			got4++
		case forged6:
			got6++
		}
	}
	if got4 != n+1 || got6 != n {
		t.Fatalf("shadow captured %d IPv4 and %d IPv6 forged packets, want %d and %d", got4, got6, n+1, n)
	}
}
