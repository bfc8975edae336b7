//go:build linux

package lab

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestDialer checks the load generator's dialer: connections come from the
// chosen local address (or the kernel's choice), in the namespace the
// Dialer belongs to, in both families; addresses outside the lab are
// refused before any socket is made; refusals and Close surface as errors.
func TestDialer(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	l := NewT(t, Config{})
	extraV4 := netip.MustParseAddr("198.18.0.9")
	extraV6 := netip.MustParseAddr("2001:2::9")
	h := l.Client.Handle()
	link, err := h.LinkByName(HostLink)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []netip.Prefix{netip.PrefixFrom(extraV4, 24), netip.PrefixFrom(extraV6, 64)} {
		a := &netlink.Addr{IPNet: ipNet(p)}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrAdd(link, a); err != nil {
			t.Fatal(err)
		}
	}
	d, err := l.Client.NewDialer()
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()

	for _, tc := range []struct {
		name       string
		local, dst netip.Addr
		want       []netip.Addr // any of these
	}{
		{"v4 from an added address", extraV4, ProdClientSideV4, []netip.Addr{extraV4}},
		{"v6 from an added address", extraV6, ProdClientSideV6, []netip.Addr{extraV6}},
		// IPv6 source selection may prefer the newer address.
		{"v4 kernel's choice", netip.Addr{}, ProdClientSideV4, []netip.Addr{ClientV4, extraV4}},
		{"v6 kernel's choice", netip.Addr{}, ProdClientSideV6, []netip.Addr{ClientV6, extraV6}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := l.Prod.Listen("tcp", netip.AddrPortFrom(tc.dst, 0).String())
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			served := echoOnce(ln)
			c, err := d.DialTCP(ctxFor(t, 5*time.Second), tc.local, ln.Addr().(*net.TCPAddr).AddrPort())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			local := c.LocalAddr().(*net.TCPAddr).AddrPort()
			if !slices.Contains(tc.want, local.Addr()) || local.Port() == 0 {
				t.Errorf("LocalAddr %s, want one of %v and a port", local, tc.want)
			}
			if got := c.RemoteAddr().String(); got != ln.Addr().String() {
				t.Errorf("RemoteAddr %s, want %s", got, ln.Addr())
			}
			if _, err := io.WriteString(c, "ping\n"); err != nil {
				t.Fatal(err)
			}
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				t.Fatalf("read reply: %v", err)
			}
			if got := strings.TrimSpace(line); got != local.Addr().String() {
				t.Errorf("listener saw peer %s, want %s", got, local.Addr())
			}
			if err := <-served; err != nil {
				t.Errorf("listener: %v", err)
			}
		})
	}

	t.Run("many concurrent dials share a local address", func(t *testing.T) {
		// More dials than one socket batch, all from one address to one
		// listener: ports are chosen at connect, and every socket made
		// in the namespace reaches prod.
		const n = 3*socketBatch + 5
		ln, err := l.Prod.Listen("tcp", netip.AddrPortFrom(ProdClientSideV4, 0).String())
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		var accepted sync.WaitGroup
		accepted.Go(func() {
			for range n {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		})
		ctx := ctxFor(t, 10*time.Second)
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for range n {
			wg.Go(func() {
				c, err := d.DialTCP(ctx, extraV4, ln.Addr().(*net.TCPAddr).AddrPort())
				if err != nil {
					errs <- err
					return
				}
				c.Close()
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		ln.Close()
		accepted.Wait()
	})

	t.Run("refused", func(t *testing.T) {
		// No listener on this port: the connect fails with a reset.
		_, err := d.DialTCP(ctxFor(t, 5*time.Second), netip.Addr{}, netip.AddrPortFrom(ProdClientSideV4, 9))
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("dial to a closed port: %v, want connection refused", err)
		}
	})

	t.Run("addresses outside the lab", func(t *testing.T) {
		ctx := ctxFor(t, time.Second)
		for _, tc := range []struct{ local, remote string }{
			{"", "192.0.2.1:80"},
			{"", "[2001:db8::1]:80"},
			{"", "[::ffff:10.0.0.1]:80"},
			{"192.0.2.7", "198.18.0.1:80"},
			{"198.18.0.2", "[2001:2::1]:80"}, // families differ
		} {
			var local netip.Addr
			if tc.local != "" {
				local = netip.MustParseAddr(tc.local)
			}
			c, err := d.DialTCP(ctx, local, netip.MustParseAddrPort(tc.remote))
			if err == nil {
				c.Close()
				t.Errorf("dial %s from %q succeeded", tc.remote, tc.local)
			}
		}
	})

	t.Run("after close", func(t *testing.T) {
		d2, err := l.Client.NewDialer()
		if err != nil {
			t.Fatal(err)
		}
		if err := d2.Close(); err != nil {
			t.Fatal(err)
		}
		_ = d2.Close() // idempotent
		if _, err := d2.DialTCP(ctxFor(t, time.Second), netip.Addr{}, netip.AddrPortFrom(ProdClientSideV4, 80)); !errors.Is(err, net.ErrClosed) {
			t.Errorf("dial after Close: %v, want net.ErrClosed", err)
		}
	})
}
