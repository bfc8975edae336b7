package lab

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLabTwoHosts: the two-host lab has no assist namespace, and the
// shadow routes the pools toward prod, so a packet from the shadow to a
// pool address arrives on prod's segment link.
func TestLabTwoHosts(t *testing.T) {
	l := NewT(t, Config{Prefix: "tstwo", TwoHosts: true})
	if l.Assist != nil || len(l.Namespaces()) != 4 {
		t.Fatalf("assist %v, namespaces %v", l.Assist, l.Namespaces())
	}
	if _, err := os.Stat(filepath.Join(netnsDir, nsName("tstwo", l.ID, RoleAssist))); err == nil {
		t.Fatal("an assist namespace exists")
	}
	for _, dst := range []netip.Addr{netip.MustParseAddr("198.19.0.7"), netip.MustParseAddr("2001:2:0:ff::7"), ClientV4, ClientV6} {
		routes, err := l.Shadow.Handle().RouteGet(net.IP(dst.AsSlice()))
		if err != nil || len(routes) == 0 {
			t.Fatalf("route to %v: %v", dst, err)
		}
		want := ProdV4
		if dst.Is6() {
			want = ProdV6
		}
		if gw, _ := netip.AddrFromSlice(routes[0].Gw); gw.Unmap() != want {
			t.Errorf("route to %v via %v, want %v", dst, routes[0].Gw, want)
		}
	}
	cmd := l.Prod.Command(context.Background(), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(`table inet watch { chain pre { type filter hook prerouting priority -300; policy accept;
		iifname "` + ProdSegmentLink + `" ip daddr ` + PoolV4.String() + ` counter
		iifname "` + ProdSegmentLink + `" ip6 daddr ` + PoolV6.String() + ` counter
	}
}`)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	for _, dst := range []string{"198.19.0.7:9", "[2001:2:0:ff::7]:9"} {
		if err := l.Shadow.Do(func() error {
			c, err := net.Dial("udp", dst)
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte("leak"))
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	ok := false
	for range 100 { // neighbour resolution first: bounded wait
		out, err := l.Prod.Run(context.Background(), "nft", "list", "table", "inet", "watch")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Count(string(out), "packets 1 ") == 2 {
			ok = true
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !ok {
		out, _ := l.Prod.Run(context.Background(), "nft", "list", "table", "inet", "watch")
		t.Fatalf("the shadow's packets to the pools did not reach prod:\n%s", out)
	}
}
