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

	"golang.org/x/sys/unix"
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

// TestLabAntiSpoofing: with AntiSpoofing, the switch passes prod's own
// traffic to the shadow and drops what prod sends from any other source
// (a pool address), in both families, counting it.
func TestLabAntiSpoofing(t *testing.T) {
	l := NewT(t, Config{Prefix: "tsspoof", TwoHosts: true, AntiSpoofing: true})
	ctx := context.Background()
	// From prod's own addresses: through.
	for _, dst := range []netip.Addr{ShadowV4, ShadowV6} {
		var ln *net.UDPConn
		if err := l.Shadow.Do(func() (err error) {
			ln, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 0)))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		to := ln.LocalAddr().(*net.UDPAddr).AddrPort()
		if err := l.Prod.Do(func() error {
			c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(to))
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte("own"))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		_ = ln.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 16)
		n, from, err := ln.ReadFromUDPAddrPort(buf)
		if err != nil || string(buf[:n]) != "own" {
			t.Fatalf("prod's own datagram to %v: %v %q", to, err, buf[:n])
		}
		if want := map[bool]netip.Addr{true: ProdV4, false: ProdV6}[dst.Is4()]; from.Addr().Unmap() != want {
			t.Fatalf("prod's datagram came from %v, want %v", from, want)
		}
	}
	// From a pool address: dropped at the switch.
	pool4, pool6 := netip.MustParseAddr("198.19.0.7"), netip.MustParseAddr("2001:2:0:ff::7")
	for _, src := range []netip.Addr{pool4, pool6} {
		dst := ShadowV4
		if src.Is6() {
			dst = ShadowV6
		}
		if err := l.Prod.Do(func() error { return sendUDPFrom(src, dst) }); err != nil {
			t.Fatal(err)
		}
	}
	var v4, v6 int
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		var err error
		if v4, v6, err = l.SpoofDrops(ctx); err != nil {
			t.Fatal(err)
		}
		if v4 >= 1 && v6 >= 1 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if v4 != 1 || v6 != 1 {
		t.Fatalf("the switch dropped %d IPv4 and %d IPv6 frames from forged sources, want 1 each", v4, v6)
	}
}

// sendUDPFrom sends one UDP datagram from src (any address: a raw socket
// with its own IP header) to dst's port 9.
func sendUDPFrom(src, dst netip.Addr) error {
	pkt := forgedUDP(src, dst)
	fam, proto := unix.AF_INET, unix.IPPROTO_RAW
	if src.Is6() {
		fam = unix.AF_INET6
	}
	fd, err := unix.Socket(fam, unix.SOCK_RAW, proto)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var sa unix.Sockaddr = &unix.SockaddrInet6{Addr: dst.As16()}
	if src.Is4() {
		sa = &unix.SockaddrInet4{Addr: dst.As4()}
	}
	return unix.Sendto(fd, pkt, 0, sa)
}

// forgedUDP builds an IP/UDP packet with a zero UDP checksum (IPv4) or a
// computed one (IPv6, where zero is not allowed); the switch drops it on
// its source before anything checks it.
func forgedUDP(src, dst netip.Addr) []byte {
	payload := []byte("forged")
	udp := make([]byte, 8+len(payload))
	udp[0], udp[1], udp[2], udp[3] = 0x9c, 0x40, 0, 9
	udp[4], udp[5] = byte(len(udp)>>8), byte(len(udp))
	copy(udp[8:], payload)
	if src.Is4() {
		ip := make([]byte, 20, 20+len(udp))
		ip[0], ip[8], ip[9] = 0x45, 64, 17
		tot := 20 + len(udp)
		ip[2], ip[3] = byte(tot>>8), byte(tot)
		s, d := src.As4(), dst.As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
		return append(ip, udp...)
	}
	ip := make([]byte, 40, 40+len(udp))
	ip[0], ip[6], ip[7] = 0x60, 17, 64
	ip[4], ip[5] = byte(len(udp)>>8), byte(len(udp))
	s, d := src.As16(), dst.As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	udp[6], udp[7] = 0xff, 0xff // any nonzero checksum: nobody checks it
	return append(ip, udp...)
}
