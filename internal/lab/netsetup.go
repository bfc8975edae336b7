package lab

// The lab's network, set up in New's order: sysctls, links, addresses,
// routes, offloads, then waiting for it to settle.

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

type sysctlKV struct{ key, value string }

// setSysctls runs before any link exists, so "default" values reach every
// lab link. New namespaces start from the kernel's built-in defaults (unless
// net.core.devconf_inherit_init_net says otherwise), not from the host's
// values, so everything the lab relies on is set explicitly.
func (l *Lab) setSysctls(context.Context) error {
	common := []sysctlKV{
		{"net.ipv4.ip_forward", "0"},
		{"net.ipv6.conf.all.forwarding", "0"},
		{"net.ipv6.conf.all.accept_dad", "0"},
		{"net.ipv6.conf.default.accept_dad", "0"},
		{"net.ipv6.conf.all.accept_ra", "0"},
		{"net.ipv6.conf.default.accept_ra", "0"},
		{"net.ipv6.conf.default.router_solicitations", "0"},
	}
	per := map[*NS][]sysctlKV{
		l.Shadow: {
			{"net.ipv4.conf.all.rp_filter", "0"},
			{"net.ipv4.conf.default.rp_filter", "0"},
		},
		// The switch is pure layer 2: no addresses, no IPv6 chatter.
		l.Switch: {
			{"net.ipv6.conf.all.disable_ipv6", "1"},
			{"net.ipv6.conf.default.disable_ipv6", "1"},
		},
	}
	for _, n := range l.all {
		if err := n.sysctls(append(append([]sysctlKV(nil), common...), per[n]...)); err != nil {
			return err
		}
	}
	// A switch forwards frames and nothing else. With br_netfilter in the
	// kernel, new namespaces pass bridged IP through the firewall hooks,
	// which real segments do not and which costs every sender on ours
	// several µs a packet. Without br_netfilter the keys do not exist.
	for _, k := range []string{"iptables", "ip6tables", "arptables"} {
		key := "net.bridge.bridge-nf-call-" + k
		if _, err := l.Switch.ReadSysctl(key); err == nil {
			if err := l.Switch.Sysctl(key, "0"); err != nil {
				return err
			}
		}
	}
	return nil
}

func (l *Lab) setLinkSysctls(context.Context) error {
	return l.Shadow.sysctls([]sysctlKV{{"net.ipv4.conf." + HostLink + ".rp_filter", "0"}})
}

// veth is one pair: a named end in ns, the peer in peerNS.
type veth struct {
	ns         *NS
	name       string
	peerNS     *NS
	peerName   string
	bridgePort bool // the peer is a port of br0
}

func (l *Lab) veths() []veth {
	return presentVeths([]veth{
		{l.Client, HostLink, l.Prod, ProdClientLink, false},
		{l.Prod, ProdSegmentLink, l.Switch, "p-" + RoleProd, true},
		{l.Shadow, HostLink, l.Switch, "p-" + RoleShadow, true},
		{l.Assist, HostLink, l.Switch, "p-" + RoleAssist, true},
	})
}

func (l *Lab) addLinks(context.Context) error {
	off := false
	br := &netlink.Bridge{
		LinkAttrs:         netlink.LinkAttrs{Name: BridgeLink, MTU: l.cfg.MTU},
		MulticastSnooping: &off, // flood multicast (neighbour discovery) deterministically
	}
	if err := l.Switch.h.LinkAdd(br); err != nil {
		return fmt.Errorf("add %s in %s: %w", BridgeLink, l.Switch.name, err)
	}
	for i, v := range l.veths() {
		// Created in v.ns with the peer placed straight into v.peerNS: no
		// link ever exists in the root namespace, even for a moment.
		//
		// The explicit ifindex keeps it different from the peer's (which
		// the kernel numbers from 2 in its namespace). Equal indexes make
		// the kernel's linkwatch treat the carrier change as not urgent and
		// delay it up to a second, and the bridge only forwards through a
		// port after that event.
		link := netlink.NewVeth(netlink.LinkAttrs{Name: v.name, MTU: l.cfg.MTU, Index: vethIndexBase + i})
		link.PeerName = v.peerName
		link.PeerNamespace = netlink.NsFd(v.peerNS.fd)
		if err := v.ns.h.LinkAdd(link); err != nil {
			return fmt.Errorf("add veth %s/%s—%s/%s: %w", v.ns.name, v.name, v.peerNS.name, v.peerName, err)
		}
		if v.bridgePort {
			port, err := v.peerNS.h.LinkByName(v.peerName)
			if err != nil {
				return fmt.Errorf("find %s in %s: %w", v.peerName, v.peerNS.name, err)
			}
			if err := v.peerNS.h.LinkSetMasterByIndex(port, brIndex(l.Switch)); err != nil {
				return fmt.Errorf("attach %s to %s: %w", v.peerName, BridgeLink, err)
			}
		}
	}
	for _, n := range l.all {
		links, err := n.h.LinkList()
		if err != nil {
			return fmt.Errorf("list links in %s: %w", n.name, err)
		}
		for _, link := range links {
			if err := n.h.LinkSetUp(link); err != nil {
				return fmt.Errorf("set %s up in %s: %w", link.Attrs().Name, n.name, err)
			}
		}
	}
	return nil
}

func brIndex(sw *NS) int {
	link, err := sw.h.LinkByName(BridgeLink)
	if err != nil {
		return 0 // LinkSetMasterByIndex then fails with a clear error
	}
	return link.Attrs().Index
}

func (l *Lab) addAddresses(context.Context) error {
	type hostAddr struct {
		ns   *NS
		link string
		bits int
		addr netip.Addr
	}
	addrs := []hostAddr{
		{l.Client, HostLink, 24, ClientV4},
		{l.Client, HostLink, 64, ClientV6},
		{l.Prod, ProdClientLink, 24, ProdClientSideV4},
		{l.Prod, ProdClientLink, 64, ProdClientSideV6},
		{l.Prod, ProdSegmentLink, 24, ProdV4},
		{l.Prod, ProdSegmentLink, 64, ProdV6},
		{l.Shadow, HostLink, 24, ShadowV4},
		{l.Shadow, HostLink, 64, ShadowV6},
		{l.Assist, HostLink, 24, AssistV4},
		{l.Assist, HostLink, 64, AssistV6},
	}
	for _, a := range addrs {
		if a.ns == nil {
			continue // TwoHosts: no assist
		}
		link, err := a.ns.h.LinkByName(a.link)
		if err != nil {
			return fmt.Errorf("find %s in %s: %w", a.link, a.ns.name, err)
		}
		nla := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(a.addr, a.bits))}
		if a.addr.Is6() {
			nla.Flags = unix.IFA_F_NODAD // usable at once, never tentative
		}
		if err := a.ns.h.AddrAdd(link, nla); err != nil {
			return fmt.Errorf("add %s to %s in %s: %w", nla.IPNet, a.link, a.ns.name, err)
		}
	}
	return nil
}

func (l *Lab) addRoutes(context.Context) error {
	link, err := l.Shadow.h.LinkByName(HostLink)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", HostLink, l.Shadow.name, err)
	}
	for _, r := range l.shadowRoutes() {
		route := &netlink.Route{
			LinkIndex: link.Attrs().Index,
			Dst:       ipNet(r.dst),
			Gw:        net.IP(r.gw.AsSlice()),
		}
		if err := l.Shadow.h.RouteAdd(route); err != nil {
			return fmt.Errorf("add route %s via %s in %s: %w", r.dst, r.gw, l.Shadow.name, err)
		}
	}
	// With forwarding off, IPv4 drops packets for other hosts silently, but
	// IPv6 without a route answers each one with an ICMPv6 "no route"
	// unreachable, which would abort the shadow's connection attempts.
	// Blackhole routes make both families drop silently.
	if l.Assist == nil {
		return nil
	}
	for _, dst := range assistBlackholes {
		route := &netlink.Route{Dst: ipNet(dst), Type: unix.RTN_BLACKHOLE}
		if err := l.Assist.h.RouteAdd(route); err != nil {
			return fmt.Errorf("add blackhole %s in %s: %w", dst, l.Assist.name, err)
		}
	}
	return nil
}

func (l *Lab) disableOffloads(ctx context.Context) error {
	if !l.cfg.DisableOffloads {
		return nil
	}
	for _, v := range l.veths() {
		for _, end := range []struct {
			ns   *NS
			link string
		}{{v.ns, v.name}, {v.peerNS, v.peerName}} {
			if _, err := end.ns.Run(ctx, "ethtool", "-K", end.link,
				"tso", "off", "gso", "off", "gro", "off", "tx", "off"); err != nil {
				return err
			}
		}
	}
	return nil
}

// settle waits, bounded, until every lab link is operationally up and no
// IPv6 address is tentative.
func (l *Lab) settle(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, settleTimeout)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		pending, err := l.unsettled()
		if err != nil {
			return err
		}
		if pending == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not settled after %v: %s", settleTimeout, pending)
		case <-tick.C:
		}
	}
}

// unsettled names the first thing not yet ready, or returns "".
func (l *Lab) unsettled() (string, error) {
	for _, n := range l.all {
		links, err := n.h.LinkList()
		if err != nil {
			return "", fmt.Errorf("list links in %s: %w", n.name, err)
		}
		for _, link := range links {
			a := link.Attrs()
			if a.Flags&net.FlagLoopback != 0 {
				continue
			}
			if a.OperState != netlink.OperUp {
				return fmt.Sprintf("%s in %s is %s", a.Name, n.name, a.OperState), nil
			}
		}
		addrs, err := n.h.AddrList(nil, netlink.FAMILY_V6)
		if err != nil {
			return "", fmt.Errorf("list addresses in %s: %w", n.name, err)
		}
		for _, a := range addrs {
			if a.Flags&unix.IFA_F_DADFAILED != 0 {
				return "", fmt.Errorf("duplicate address detection failed for %s in %s", a.IPNet, n.name)
			}
			if a.Flags&unix.IFA_F_TENTATIVE != 0 {
				return fmt.Sprintf("%s in %s is tentative", a.IPNet, n.name), nil
			}
		}
	}
	return "", nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{
		IP:   net.IP(p.Addr().AsSlice()),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}
}
