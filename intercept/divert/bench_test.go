package divert

import (
	"net"
	"net/netip"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

// BenchmarkQueueRead: reading one packet and sending its verdict, on a
// fake socket: the agent's own cost per packet, without the kernel's.
func BenchmarkQueueRead(b *testing.B) {
	q := testQueue(&fakeConn{loop: packetMsg(1, make([]byte, 60), 0)})
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := q.Read(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLiveDivert: in the lab's shadow namespace, one datagram sent to
// a pool, diverted by the rules, read from the queue and dropped: the
// whole per-packet cost of the two-host mode on the shadow (sender's
// syscall, the rule, the queue's netlink message, Read, the verdict).
func BenchmarkLiveDivert(b *testing.B) {
	l := lab.NewT(b, lab.Config{Prefix: "tsdivbench"})
	nsh, err := netns.GetFromName(l.Shadow.Name())
	if err != nil {
		b.Fatal(err)
	}
	defer nsh.Close()
	cfg := DefaultConfig()
	var q *Queue
	var c net.Conn
	if err := l.Shadow.Do(func() (err error) {
		if q, err = Open(cfg); err != nil {
			return err
		}
		c, err = net.Dial("udp", "198.19.0.5:9")
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	defer c.Close()
	r := &Rules{Queue: cfg.Num, Pools: []netip.Prefix{lab.PoolV4}, opts: []nftables.ConnOption{nftables.WithNetNSFd(int(nsh))}}
	if _, err := r.Install(); err != nil {
		b.Fatal(err)
	}
	defer r.Remove()
	msg := make([]byte, 40)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, _, err := q.Read(); err != nil {
			b.Fatal(err)
		}
	}
}
