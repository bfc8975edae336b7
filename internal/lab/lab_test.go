//go:build linux

package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2")
	}
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// rootLinks describes the root namespace's links ("index name type").
func rootLinks(t *testing.T) []string {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatalf("list root links: %v", err)
	}
	var s []string
	for _, l := range links {
		s = append(s, fmt.Sprintf("%d %s %s", l.Attrs().Index, l.Attrs().Name, l.Type()))
	}
	slices.Sort(s)
	return s
}

// checkRootLinksUnchanged compares the root link list now with before, at
// the end of the test (after the lab's own cleanup, which was registered
// later and so runs first).
func checkRootLinksUnchanged(t *testing.T, before []string) {
	t.Cleanup(func() {
		if after := rootLinks(t); !slices.Equal(before, after) {
			t.Errorf("root namespace links changed:\nbefore %q\nafter  %q", before, after)
		}
	})
}

// netnsNames lists `ip netns list`, by name.
func netnsNames(t *testing.T) []string {
	t.Helper()
	out, err := exec.CommandContext(ctxFor(t, 10*time.Second), "ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	var names []string
	for line := range strings.Lines(string(out)) {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names
}

// assertLabGone checks that no namespace of lab prefix-id is left.
func assertLabGone(t *testing.T, prefix, id string) {
	t.Helper()
	if id == "" {
		t.Fatal("lab id unknown")
	}
	stem := prefix + "-" + id + "-"
	for _, n := range netnsNames(t) {
		if strings.HasPrefix(n, stem) {
			t.Errorf("namespace %s left behind (ip netns list)", n)
		}
	}
	matches, _ := filepath.Glob(filepath.Join(netnsDir, stem+"*"))
	for _, m := range matches {
		t.Errorf("namespace file %s left behind", m)
	}
}

func nsInode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	return st.Ino
}

func addrOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

func TestLabTopology(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  Config
		mtu  int
	}{
		{"defaults", Config{}, 1500},
		{"offloads off mtu 1400", Config{Prefix: "tshtopo", DisableOffloads: true, MTU: 1400}, 1400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			checkRootLinksUnchanged(t, rootLinks(t))
			l := NewT(t, tc.cfg)
			prefix := tc.cfg.Prefix
			if prefix == "" {
				prefix = "tsh"
			}
			ctx := ctxFor(t, 20*time.Second)

			// Names: "<prefix>-<6 hex>-<role>", all listed by ip netns.
			if !regexp.MustCompile(`^[0-9a-f]{6}$`).MatchString(l.ID) {
				t.Errorf("ID %q: want 6 hex digits", l.ID)
			}
			listed := netnsNames(t)
			roles := []string{RoleClient, RoleProd, RoleShadow, RoleAssist, RoleSwitch}
			for i, n := range l.Namespaces() {
				want := prefix + "-" + l.ID + "-" + roles[i]
				if n.Name() != want {
					t.Errorf("namespace %d is %q, want %q", i, n.Name(), want)
				}
				if !slices.Contains(listed, want) {
					t.Errorf("%s not in ip netns list %q", want, listed)
				}
			}

			// Links: exactly the expected ones, up, with the configured MTU.
			wantLinks := map[*NS][]string{
				l.Client: {"eth0", "lo"},
				l.Prod:   {"eth0", "eth1", "lo"},
				l.Shadow: {"eth0", "lo"},
				l.Assist: {"eth0", "lo"},
				l.Switch: {"br0", "lo", "p-assist", "p-prod", "p-shadow"},
			}
			for _, n := range l.Namespaces() {
				links, err := n.Handle().LinkList()
				if err != nil {
					t.Fatalf("links in %s: %v", n, err)
				}
				var names []string
				brIdx := 0
				for _, link := range links {
					a := link.Attrs()
					names = append(names, a.Name)
					if a.Name == BridgeLink {
						brIdx = a.Index
					}
					if a.Flags&net.FlagUp == 0 {
						t.Errorf("%s in %s is down", a.Name, n)
					}
					if a.Name != "lo" && a.MTU != tc.mtu {
						t.Errorf("%s in %s has mtu %d, want %d", a.Name, n, a.MTU, tc.mtu)
					}
				}
				slices.Sort(names)
				if !slices.Equal(names, wantLinks[n]) {
					t.Errorf("links in %s = %q, want %q", n, names, wantLinks[n])
				}
				if n == l.Switch {
					for _, link := range links {
						if strings.HasPrefix(link.Attrs().Name, "p-") && link.Attrs().MasterIndex != brIdx {
							t.Errorf("%s is not a port of %s", link.Attrs().Name, BridgeLink)
						}
					}
				}
			}

			// No default route, in any table, in any lab namespace.
			for _, n := range l.Namespaces() {
				for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
					routes, err := n.Handle().RouteListFiltered(fam,
						&netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
					if err != nil {
						t.Fatalf("routes in %s: %v", n, err)
					}
					for _, r := range routes {
						if r.Dst == nil || (r.Dst.IP.IsUnspecified() && maskBits(r.Dst) == 0) {
							t.Errorf("default route in %s (table %d): %s", n, r.Table, r)
						}
					}
				}
				for _, args := range [][]string{
					{"-4", "route", "show", "default", "table", "all"},
					{"-6", "route", "show", "default", "table", "all"},
				} {
					out, err := exec.CommandContext(ctx, "ip", append([]string{"-n", n.Name()}, args...)...).CombinedOutput()
					if err != nil || len(strings.TrimSpace(string(out))) > 0 {
						t.Errorf("ip %s in %s: %q, %v; want no output", strings.Join(args, " "), n, out, err)
					}
				}
			}

			// Addresses: exactly the planned ones outside loopback and
			// link-local, and all inside the lab ranges.
			wantAddrs := map[*NS][]netip.Addr{
				l.Client: {ClientV4, ClientV6},
				l.Prod:   {ProdClientSideV4, ProdClientSideV6, ProdV4, ProdV6},
				l.Shadow: {ShadowV4, ShadowV6},
				l.Assist: {AssistV4, AssistV6},
				l.Switch: nil,
			}
			for _, n := range l.Namespaces() {
				addrs, err := n.Handle().AddrList(nil, netlink.FAMILY_ALL)
				if err != nil {
					t.Fatalf("addresses in %s: %v", n, err)
				}
				var got []netip.Addr
				for _, a := range addrs {
					ip := addrOf(a.IP)
					if ip.IsLoopback() || ip.IsLinkLocalUnicast() {
						continue
					}
					if !LabV4.Contains(ip) && !LabV6.Contains(ip) {
						t.Errorf("address %s in %s is outside %s and %s", ip, n, LabV4, LabV6)
					}
					if a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
						t.Errorf("address %s in %s has flags %#x (tentative or dad failed)", ip, n, a.Flags)
					}
					got = append(got, ip)
				}
				slices.SortFunc(got, netip.Addr.Compare)
				want := slices.SortedFunc(slices.Values(wantAddrs[n]), netip.Addr.Compare)
				if !slices.Equal(got, want) {
					t.Errorf("addresses in %s = %v, want %v", n, got, want)
				}
			}

			// The shadow reaches the client net and the pool via the assist;
			// prod has no route to the pool at all.
			for _, dst := range []netip.Addr{
				ClientV4, netip.MustParseAddr("198.19.0.7"), netip.MustParseAddr("198.19.255.254"),
				ClientV6, netip.MustParseAddr("2001:2:0:ff::7"),
			} {
				routes, err := l.Shadow.Handle().RouteGet(net.IP(dst.AsSlice()))
				if err != nil || len(routes) == 0 {
					t.Errorf("shadow route to %s: %v, %v", dst, routes, err)
					continue
				}
				wantGW := AssistV4
				if dst.Is6() {
					wantGW = AssistV6
				}
				if gw := addrOf(routes[0].Gw); gw != wantGW {
					t.Errorf("shadow route to %s goes via %v, want %s", dst, gw, wantGW)
				}
			}
			for _, n := range []*NS{l.Prod, l.Client} {
				if routes, err := n.Handle().RouteGet(net.ParseIP("198.19.0.7")); err == nil {
					t.Errorf("%s has a route to the pool: %v", n, routes)
				}
			}
			// The assist blackholes what the shadow sends it.
			var holes []netip.Prefix
			for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
				routes, err := l.Assist.Handle().RouteList(nil, fam)
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range routes {
					if r.Type == unix.RTN_BLACKHOLE {
						ones, _ := r.Dst.Mask.Size()
						holes = append(holes, netip.PrefixFrom(addrOf(r.Dst.IP), ones))
					}
				}
			}
			wantHoles := []netip.Prefix{ClientNetV4, PoolV4, ClientNetV6, PoolV6}
			if !slices.Equal(holes, wantHoles) {
				t.Errorf("assist blackholes %v, want %v", holes, wantHoles)
			}

			// Sysctls, read back both from /proc/sys in the namespace and
			// with the sysctl tool through ip netns exec.
			wantSysctl := []struct {
				ns         *NS
				key, value string
			}{
				{l.Assist, "net.ipv4.ip_forward", "0"},
				{l.Assist, "net.ipv6.conf.all.forwarding", "0"},
				{l.Prod, "net.ipv4.ip_forward", "0"},
				{l.Shadow, "net.ipv4.conf.all.rp_filter", "0"},
				{l.Shadow, "net.ipv4.conf.default.rp_filter", "0"},
				{l.Shadow, "net.ipv4.conf.eth0.rp_filter", "0"},
				{l.Shadow, "net.ipv6.conf.eth0.accept_dad", "0"},
				{l.Client, "net.ipv6.conf.eth0.accept_ra", "0"},
			}
			// The switch bridges without firewall hooks, where the kernel
			// has them (br_netfilter).
			if _, err := os.Stat("/proc/sys/net/bridge"); err == nil {
				wantSysctl = append(wantSysctl, struct {
					ns         *NS
					key, value string
				}{l.Switch, "net.bridge.bridge-nf-call-iptables", "0"})
			}
			for _, w := range wantSysctl {
				got, err := w.ns.ReadSysctl(w.key)
				if err != nil || got != w.value {
					t.Errorf("ReadSysctl %s in %s = %q, %v; want %q", w.key, w.ns, got, err, w.value)
				}
				out, err := w.ns.Run(ctx, "sysctl", "-n", w.key)
				if got := strings.TrimSpace(string(out)); err != nil || got != w.value {
					t.Errorf("sysctl -n %s in %s = %q, %v; want %q", w.key, w.ns, got, err, w.value)
				}
			}

			if tc.cfg.DisableOffloads {
				for _, n := range []*NS{l.Client, l.Prod, l.Shadow, l.Assist} {
					out, err := n.Run(ctx, "ethtool", "-k", "eth0")
					if err != nil {
						t.Fatal(err)
					}
					for _, f := range []string{"tcp-segmentation-offload", "generic-segmentation-offload",
						"generic-receive-offload", "tx-checksumming"} {
						if !strings.Contains(string(out), f+": off") {
							t.Errorf("%s on eth0 in %s is not off", f, n)
						}
					}
				}
			}
		})
	}
}

func maskBits(n *net.IPNet) int {
	ones, _ := n.Mask.Size()
	return ones
}

// echoOnce accepts one connection on ln, reads a line and answers with the
// peer's address.
func echoOnce(ln net.Listener) <-chan error {
	errc := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			errc <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			errc <- err
			return
		}
		ap := c.RemoteAddr().(*net.TCPAddr).AddrPort()
		_, err = fmt.Fprintf(c, "%s\n", ap.Addr().Unmap())
		errc <- err
	}()
	return errc
}

func TestLabConnectivity(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	l := NewT(t, Config{})

	for _, tc := range []struct {
		name     string
		from, to *NS
		dst, src netip.Addr
	}{
		{"client to prod v4", l.Client, l.Prod, ProdClientSideV4, ClientV4},
		{"client to prod v6", l.Client, l.Prod, ProdClientSideV6, ClientV6},
		{"prod to shadow v4", l.Prod, l.Shadow, ShadowV4, ProdV4},
		{"prod to shadow v6", l.Prod, l.Shadow, ShadowV6, ProdV6},
		{"prod to assist v4", l.Prod, l.Assist, AssistV4, ProdV4},
		{"prod to assist v6", l.Prod, l.Assist, AssistV6, ProdV6},
		{"shadow to assist v4", l.Shadow, l.Assist, AssistV4, ShadowV4},
		{"shadow to assist v6", l.Shadow, l.Assist, AssistV6, ShadowV6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ln, err := tc.to.Listen("tcp", netip.AddrPortFrom(tc.dst, 0).String())
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			served := echoOnce(ln)
			ctx := ctxFor(t, 5*time.Second)
			c, err := tc.from.DialContext(ctx, "tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			if local := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(); local != tc.src {
				t.Errorf("local address %s, want %s", local, tc.src)
			}
			if _, err := io.WriteString(c, "ping\n"); err != nil {
				t.Fatal(err)
			}
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				t.Fatalf("read reply: %v", err)
			}
			if got := strings.TrimSpace(line); got != tc.src.String() {
				t.Errorf("listener saw peer %s, want %s", got, tc.src)
			}
			if err := <-served; err != nil {
				t.Errorf("listener: %v", err)
			}
		})
	}

	// The client has no route to the segment: with a listener in place, a
	// dial fails at once with "network unreachable".
	for _, tc := range []struct {
		name string
		to   *NS
		dst  netip.Addr
	}{
		{"client cannot reach shadow v4", l.Shadow, ShadowV4},
		{"client cannot reach shadow v6", l.Shadow, ShadowV6},
		{"client cannot reach assist v4", l.Assist, AssistV4},
		{"client cannot reach prod segment side v4", l.Prod, ProdV4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ln, err := tc.to.Listen("tcp", netip.AddrPortFrom(tc.dst, 0).String())
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			ctx := ctxFor(t, 2*time.Second)
			start := time.Now()
			c, err := l.Client.DialContext(ctx, "tcp", ln.Addr().String())
			if err == nil {
				c.Close()
				t.Fatalf("client reached %s", ln.Addr())
			}
			if !errors.Is(err, syscall.ENETUNREACH) {
				t.Errorf("dial error %v, want network unreachable", err)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("dial took %v to fail", d)
			}
		})
	}

	t.Run("http keep-alive client to prod", func(t *testing.T) {
		t.Parallel()
		for _, dst := range []netip.Addr{ProdClientSideV4, ProdClientSideV6} {
			ln, err := l.Prod.Listen("tcp", netip.AddrPortFrom(dst, 0).String())
			if err != nil {
				t.Fatal(err)
			}
			srv := &http.Server{
				Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					io.WriteString(w, r.RemoteAddr)
				}),
				ReadHeaderTimeout: 5 * time.Second,
			}
			go srv.Serve(ln)
			defer srv.Close()

			hc := l.Client.HTTPClient(1)
			defer hc.CloseIdleConnections()
			var peers []string
			for range 3 {
				req, _ := http.NewRequestWithContext(ctxFor(t, 5*time.Second), "GET", "http://"+ln.Addr().String()+"/", nil)
				resp, err := hc.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 {
					t.Fatalf("GET: %d %v", resp.StatusCode, err)
				}
				peers = append(peers, string(body))
			}
			ap, err := netip.ParseAddrPort(peers[0])
			if err != nil || ap.Addr().Unmap() != map[bool]netip.Addr{true: ClientV4, false: ClientV6}[dst.Is4()] {
				t.Errorf("server saw %q, want the client's address", peers[0])
			}
			if peers[1] != peers[0] || peers[2] != peers[0] {
				t.Errorf("connection not reused: peers %q", peers)
			}
		}
	})

	t.Run("dial refuses non-lab addresses", func(t *testing.T) {
		t.Parallel()
		ctx := ctxFor(t, time.Second)
		for _, addr := range []string{"192.0.2.1:80", "[2001:db8::1]:80", "localhost:80", "10.0.0.1:80"} {
			if c, err := l.Client.DialContext(ctx, "tcp", addr); err == nil {
				c.Close()
				t.Errorf("dial %s succeeded", addr)
			}
		}
	})
}

// counterRules installs, in ns, nftables ingress counters on every listed
// link: "fromshadow" counts TCP to port 80 from the shadow's addresses,
// "pool" counts anything addressed to the client pool, "answers" counts
// ICMP and ICMPv6 destination-unreachable messages and TCP resets.
func counterRules(t *testing.T, n *NS, links ...string) {
	t.Helper()
	var b strings.Builder
	b.WriteString("table netdev tshlabtest {\n counter fromshadow {}\n counter pool {}\n counter answers {}\n")
	for _, link := range links {
		fmt.Fprintf(&b, " chain in_%s {\n  type filter hook ingress device %q priority 0; policy accept;\n", link, link)
		fmt.Fprintf(&b, "  ip saddr %s tcp dport 80 counter name \"fromshadow\"\n", ShadowV4)
		fmt.Fprintf(&b, "  ip6 saddr %s tcp dport 80 counter name \"fromshadow\"\n", ShadowV6)
		fmt.Fprintf(&b, "  ip daddr %s counter name \"pool\"\n", PoolV4)
		fmt.Fprintf(&b, "  ip6 daddr %s counter name \"pool\"\n", PoolV6)
		b.WriteString("  icmp type destination-unreachable counter name \"answers\"\n")
		b.WriteString("  icmpv6 type destination-unreachable counter name \"answers\"\n")
		b.WriteString("  tcp flags & rst == rst counter name \"answers\"\n }\n")
	}
	b.WriteString("}\n")
	cmd := n.Command(ctxFor(t, 10*time.Second), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(b.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v: %s", n, err, out)
	}
}

var packetsRE = regexp.MustCompile(`packets (\d+)`)

func readCounter(t *testing.T, n *NS, name string) int {
	t.Helper()
	out, err := n.Run(ctxFor(t, 10*time.Second), "nft", "list", "counter", "netdev", "tshlabtest", name)
	if err != nil {
		t.Fatal(err)
	}
	m := packetsRE.FindSubmatch(out)
	if m == nil {
		t.Fatalf("no packet count in %q", out)
	}
	v, _ := strconv.Atoi(string(m[1]))
	return v
}

func TestLabReplyDiesAtAssist(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("tcpdump"); err != nil {
		t.Skip("needs tcpdump")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft")
	}
	t.Parallel()
	l := NewT(t, Config{})

	counterRules(t, l.Client, HostLink)
	counterRules(t, l.Prod, ProdClientLink, ProdSegmentLink)
	counterRules(t, l.Assist, HostLink)
	counterRules(t, l.Shadow, HostLink)

	ctx := ctxFor(t, 20*time.Second)
	dump, err := l.Assist.Start(ctx, "tcpdump", "-i", HostLink, "-n", "-l", "-U",
		"tcp dst port 80 and (src host "+ShadowV4.String()+" or src host "+ShadowV6.String()+")")
	if err != nil {
		t.Fatal(err)
	}
	if !waitFor(5*time.Second, func() bool { return strings.Contains(dump.Output(), "listening on") }) {
		t.Fatalf("tcpdump not ready: %q", dump.Output())
	}

	// From the shadow, connect to pool addresses and to the real client
	// (as a mirrored connection's replies would go). Nothing answers: the
	// SYNs reach the assist and die there.
	targets := []netip.Addr{
		netip.MustParseAddr("198.19.0.7"), netip.MustParseAddr("2001:2:0:ff::7"),
		ClientV4, ClientV6,
	}
	var wg sync.WaitGroup
	for _, dst := range targets {
		wg.Go(func() {
			dctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
			defer cancel()
			c, err := l.Shadow.DialContext(dctx, "tcp", netip.AddrPortFrom(dst, 80).String())
			if err == nil {
				c.Close()
				t.Errorf("shadow connected to %s:80", dst)
				return
			}
			if ne, ok := errors.AsType[net.Error](err); !ok || !ne.Timeout() {
				t.Errorf("dial %s: %v; want a timeout (no answer at all)", dst, err)
			}
		})
	}
	wg.Wait()

	if err := dump.Stop(2 * time.Second); err != nil && !strings.Contains(err.Error(), "terminated") && !strings.Contains(err.Error(), "exit status") {
		t.Logf("tcpdump stopped: %v", err)
	}
	out := dump.Output()
	for _, dst := range targets {
		want := fmt.Sprintf("> %s.80: Flags [S]", dst)
		if !strings.Contains(out, want) {
			t.Errorf("assist did not capture SYN to %s (%q) in:\n%s", dst, want, out)
		}
	}
	if got := readCounter(t, l.Assist, "fromshadow"); got < len(targets) {
		t.Errorf("assist ingress counted %d SYNs from the shadow, want ≥ %d", got, len(targets))
	}
	if got := readCounter(t, l.Assist, "pool"); got < 2 {
		t.Errorf("assist ingress counted %d packets to the pool, want ≥ 2", got)
	}
	// Nothing came back to the shadow: no ICMP unreachable, no reset.
	if got := readCounter(t, l.Shadow, "answers"); got != 0 {
		t.Errorf("shadow received %d unreachables or resets, want 0", got)
	}
	for _, n := range []*NS{l.Client, l.Prod} {
		for _, c := range []string{"fromshadow", "pool", "answers"} {
			if got := readCounter(t, n, c); got != 0 {
				t.Errorf("%s ingress counter %s = %d, want 0", n, c, got)
			}
		}
	}
}

// waitFor polls cond every 10ms until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func procGone(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return errors.Is(err, os.ErrNotExist)
}

func comm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

func TestLabCloseTearsDown(t *testing.T) {
	requireRoot(t)
	t.Parallel()

	t.Run("close", func(t *testing.T) {
		t.Parallel()
		checkRootLinksUnchanged(t, rootLinks(t))
		l := NewT(t, Config{stopGrace: 300 * time.Millisecond})
		ctx := ctxFor(t, 20*time.Second)

		polite, err := l.Prod.Start(ctx, "sleep", "300")
		if err != nil {
			t.Fatal(err)
		}
		// Ignores SIGTERM (SIG_IGN survives exec), so Close must SIGKILL it.
		stubborn, err := l.Shadow.Start(ctx, "sh", "-c", `trap "" TERM; exec sleep 301`)
		if err != nil {
			t.Fatal(err)
		}
		quick, err := l.Client.Start(ctx, "true")
		if err != nil {
			t.Fatal(err)
		}
		if !waitFor(5*time.Second, func() bool { return comm(stubborn.PID()) == "sleep" }) {
			t.Fatalf("stubborn process never exec'd sleep (comm %q)", comm(stubborn.PID()))
		}
		// ip netns exec execs: the PID is the program's, in the namespace
		// (once ip has exec'd it: until then comm is "ip").
		if !waitFor(5*time.Second, func() bool { return comm(polite.PID()) == "sleep" }) {
			t.Errorf("pid %d is %q, want sleep", polite.PID(), comm(polite.PID()))
		}
		if got, want := nsInode(t, fmt.Sprintf("/proc/%d/ns/net", polite.PID())),
			nsInode(t, filepath.Join(netnsDir, l.Prod.Name())); got != want {
			t.Errorf("process netns inode %d, want prod's %d", got, want)
		}
		select {
		case <-quick.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("true did not exit")
		}
		if err := quick.Wait(); err != nil {
			t.Errorf("true: %v", err)
		}

		errs := make(chan error, 3)
		for range 3 {
			go func() { errs <- l.Close() }()
		}
		for range 3 {
			if err := <-errs; err != nil {
				t.Errorf("Close: %v", err)
			}
		}
		if err := l.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		assertLabGone(t, "tsh", l.ID)
		for _, p := range []*Process{polite, stubborn} {
			if !p.Exited() || !procGone(p.PID()) {
				t.Errorf("%s still running after Close", p)
			}
		}
		if err := polite.Wait(); err == nil || !strings.Contains(err.Error(), "terminated") {
			t.Errorf("polite exit: %v, want signal: terminated", err)
		}
		if err := stubborn.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
			t.Errorf("stubborn exit: %v, want signal: killed", err)
		}
		if _, err := l.Prod.Start(ctx, "sleep", "1"); !errors.Is(err, ErrClosed) {
			t.Errorf("Start after Close: %v, want ErrClosed", err)
		}
		if err := l.Prod.Do(func() error { return nil }); !errors.Is(err, ErrClosed) {
			t.Errorf("Do after Close: %v, want ErrClosed", err)
		}
	})

	t.Run("context stops process", func(t *testing.T) {
		t.Parallel()
		l := NewT(t, Config{})
		ctx, cancel := context.WithCancel(t.Context())
		p, err := l.Assist.Start(ctx, "sleep", "300")
		if err != nil {
			t.Fatal(err)
		}
		cancel()
		select {
		case <-p.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("process outlived its context")
		}
		if !procGone(p.PID()) {
			t.Errorf("pid %d still exists", p.PID())
		}
	})

	errInjected := errors.New("injected")
	for _, step := range []string{"namespace client", "namespace shadow", "namespaces", "sysctls",
		"links", "addresses", "routes", "offloads", "settle"} {
		for _, mode := range []string{"error", "panic"} {
			t.Run("setup fails at "+step+" by "+mode, func(t *testing.T) {
				requireRoot(t)
				t.Parallel()
				checkRootLinksUnchanged(t, rootLinks(t))
				var (
					id   string
					proc *Process
				)
				cfg := Config{Prefix: "tshfail", DisableOffloads: true}
				cfg.afterStep = func(l *Lab, s string) error {
					id = l.ID
					if s == "sysctls" {
						// A tracked process must not survive the failed setup.
						p, err := l.Prod.Start(t.Context(), "sleep", "300")
						if err != nil {
							return err
						}
						proc = p
					}
					if s != step {
						return nil
					}
					if mode == "panic" {
						panic(errInjected)
					}
					return errInjected
				}
				var err error
				func() {
					defer func() {
						if r := recover(); r != nil {
							err = fmt.Errorf("panic: %v", r)
						}
					}()
					var l *Lab
					l, err = New(ctxFor(t, 30*time.Second), cfg, nil)
					if l != nil {
						t.Error("New returned a lab with an error")
						l.Close()
					}
				}()
				switch {
				case mode == "error" && !errors.Is(err, errInjected):
					t.Errorf("New: %v, want the injected error", err)
				case mode == "panic" && (err == nil || !strings.Contains(err.Error(), "injected")):
					t.Errorf("New: %v, want the injected panic", err)
				}
				assertLabGone(t, cfg.Prefix, id)
				if proc != nil && (!proc.Exited() || !procGone(proc.PID())) {
					t.Errorf("%s survived the failed setup", proc)
				}
			})
		}
	}
}

// rootNetns is the test process's namespace, read during package
// initialisation, before any Do can move the main thread for a moment.
var rootNetns = func() uint64 {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		panic(err)
	}
	return st.Ino
}()

func TestNSDo(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	l := NewT(t, Config{})
	root := rootNetns
	want := nsInode(t, filepath.Join(netnsDir, l.Shadow.Name()))

	threadNS := func() uint64 {
		return nsInode(t, fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid()))
	}
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			err := l.Shadow.Do(func() error {
				if got := threadNS(); got != want {
					return fmt.Errorf("fn ran in netns %d, want %d", got, want)
				}
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	// No thread of this process may have been left in the lab namespace.
	for range 4 * runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			if got := threadNS(); got != root {
				t.Errorf("thread %d left in netns %d", unix.Gettid(), got)
			}
		})
	}
	wg.Wait()
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, task := range tasks {
		if got := nsInode(t, "/proc/self/task/"+task.Name()+"/ns/net"); got == want {
			t.Errorf("thread %s is in the shadow namespace after Do returned", task.Name())
		}
	}

	// A panic in fn reaches the caller; the thread does not leak.
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Errorf("recovered %v, want boom", r)
			}
		}()
		_ = l.Shadow.Do(func() error { panic("boom") })
		t.Error("Do returned after a panic")
	}()
	// runtime.Goexit in fn is reported, not silently swallowed.
	if err := l.Shadow.Do(func() error { runtime.Goexit(); return nil }); err == nil {
		t.Error("Do with Goexit returned nil")
	}

	if err := l.Shadow.Sysctl("kernel.hostname", "x"); err == nil {
		t.Error("Sysctl accepted a host-wide key")
	}
	if err := l.Shadow.Sysctl("net.ipv4.conf.eth0.rp_filter", "2"); err != nil {
		t.Fatal(err)
	}
	if v, err := l.Shadow.ReadSysctl("net/ipv4/conf/eth0/rp_filter"); err != nil || v != "2" {
		t.Errorf("rp_filter = %q, %v; want 2", v, err)
	}
	if v, err := l.Prod.ReadSysctl("net.ipv4.conf.eth0.rp_filter"); err != nil || v != "0" {
		t.Errorf("prod rp_filter = %q, %v; want 0 (untouched)", v, err)
	}
}

func TestTailBuffer(t *testing.T) {
	b := newTailBuffer(10)
	for i := range 100 {
		fmt.Fprintf(b, "%d", i%10)
	}
	if got, want := b.String(), "[90 bytes dropped]\n0123456789"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if len(b.buf) > 20 {
		t.Errorf("buffer grew to %d bytes, want ≤ 20", len(b.buf))
	}
	small := newTailBuffer(10)
	io.WriteString(small, "hello")
	if got := small.String(); got != "hello" {
		t.Errorf("String() = %q", got)
	}
}

func TestCheckAddr(t *testing.T) {
	for _, tc := range []struct {
		addr   string
		listen bool
		ok     bool
	}{
		{"198.18.1.2:80", false, true},
		{"198.19.0.7:80", false, true},
		{"[2001:2:0:1::2]:80", false, true},
		{"127.0.0.1:80", false, true},
		{"192.0.2.1:80", false, false},
		{"[2001:db8::1]:80", false, false},
		{"[::ffff:10.0.0.1]:80", false, false},
		{"localhost:80", false, false},
		{":80", false, false},
		{":0", true, true},
		{"198.18.0.1:0", true, true},
		{"example.com:80", true, false},
		{"198.18.0.1", false, false},
	} {
		err := checkAddr(tc.addr, tc.listen)
		if (err == nil) != tc.ok {
			t.Errorf("checkAddr(%q, listen=%v) = %v, want ok=%v", tc.addr, tc.listen, err, tc.ok)
		}
	}
}
