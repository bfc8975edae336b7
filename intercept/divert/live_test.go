package divert

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

// TestLiveDivert, in the lab's shadow namespace (whose routes send the
// pools to the assist): the rules queue the host's packets to the pools,
// Read returns them from their IP header, none reaches the assist, with
// the queue bound or not (fail closed); installing again replaces the
// table (no duplicate rule) and Remove deletes it.
func TestLiveDivert(t *testing.T) {
	l := lab.NewT(t, lab.Config{Prefix: "tsdivert"})
	nsh, err := netns.GetFromName(l.Shadow.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nsh.Close() })
	watch := `table inet watch {
	chain pre {
		type filter hook prerouting priority -300; policy accept;
		ip daddr ` + lab.PoolV4.String() + ` counter
		ip6 daddr ` + lab.PoolV6.String() + ` counter
	}
}`
	cmd := l.Assist.Command(context.Background(), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(watch)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}

	cfg := DefaultConfig()
	cfg.Num = 4242
	var q *Queue
	if err := l.Shadow.Do(func() (err error) { q, err = Open(cfg); return err }); err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	r := &Rules{Queue: cfg.Num, Pools: []netip.Prefix{lab.PoolV4, lab.PoolV6}, opts: []nftables.ConnOption{nftables.WithNetNSFd(int(nsh))}}
	if replaced, err := r.Install(); err != nil || replaced {
		t.Fatalf("install: replaced %v, %v", replaced, err)
	}
	t.Cleanup(func() { r.Remove() })
	dst4 := netip.AddrPortFrom(netip.MustParseAddr("198.19.0.5"), 9)
	dst6 := netip.AddrPortFrom(netip.MustParseAddr("2001:2:0:ff::5"), 9)
	send := func(dst netip.AddrPort) {
		t.Helper()
		if err := l.Shadow.Do(func() error {
			c, err := net.Dial("udp", dst.String())
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte("diverted"))
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	for _, dst := range []netip.AddrPort{dst4, dst6} {
		send(dst)
		b, _, err := q.Read()
		if err != nil {
			t.Fatalf("read the packet to %v: %v", dst, err)
		}
		var got netip.Addr
		if b[0]>>4 == 4 {
			got = netip.AddrFrom4([4]byte(b[16:20]))
		} else {
			got = netip.AddrFrom16([16]byte(b[24:40]))
		}
		if got != dst.Addr() || !strings.HasSuffix(string(b), "diverted") {
			t.Fatalf("read a packet to %v (%d bytes), want the datagram to %v", got, len(b), dst)
		}
	}
	// The kernel's counters, as the agent in the namespace reads them (a
	// thread's own view: the test process lives in another namespace).
	q.procPath = "/proc/thread-self/net/netfilter/nfnetlink_queue"
	var st Stats
	var k KernelQueue
	if err := l.Shadow.Do(func() (err error) {
		st = q.QueueStats()
		k, err = ReadKernelQueue(q.procPath, cfg.Num)
		return err
	}); err != nil {
		t.Fatalf("the kernel's queue %d: %v", cfg.Num, err)
	}
	if st.Read != 2 || st.Queued != 2 || st.QueueTotal != 0 || st.QueueDropped != 0 || st.UserDropped != 0 ||
		k.PortID == 0 || k.CopyMode != 2 || k.CopyRange != uint64(cfg.CopyRange) {
		t.Fatalf("stats %+v, kernel %+v: want 2 read and queued, none held or dropped, copy mode 2, range %d", st, k, cfg.CopyRange)
	}
	// The agent gone: the kernel drops, since the rule has no bypass.
	q.Close()
	send(dst4)
	send(dst6)

	in, err := r.inspect()
	if err != nil {
		t.Fatal(err)
	}
	if !in.Table || !in.Chain || in.Hook != *nftables.ChainHookOutput || in.Priority != Priority || len(in.Rules) != 2 {
		t.Fatalf("inspected %+v", in)
	}
	for i, want := range []netip.Prefix{lab.PoolV4, lab.PoolV6} {
		if pr := in.Rules[i]; pr.Pool != want || pr.Queue != cfg.Num || pr.Bypass || pr.Packets != 2 {
			t.Errorf("rule %d: %+v, want %v to queue %d, 2 packets, no bypass", i, pr, want, cfg.Num)
		}
	}
	out, err := l.Assist.Run(context.Background(), "nft", "list", "table", "inet", "watch")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(string(out), "packets 0 ") != 2 {
		t.Fatalf("packets to the pools reached the assist:\n%s", out)
	}

	// A restart after SIGKILL finds the table: replaced, not duplicated.
	if replaced, err := r.Install(); err != nil || !replaced {
		t.Fatalf("reinstall: replaced %v, %v", replaced, err)
	}
	if in, err := r.inspect(); err != nil || len(in.Rules) != 2 || in.Rules[0].Packets != 0 {
		t.Fatalf("after reinstall: %+v, %v", in, err)
	}
	if err := r.Remove(); err != nil {
		t.Fatal(err)
	}
	if in, err := r.inspect(); err != nil || in.Table {
		t.Fatalf("after remove: %+v, %v", in, err)
	}
	if err := r.Remove(); err != nil {
		t.Fatalf("second remove: %v", err)
	}
}
