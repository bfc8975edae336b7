// Package linksock sends IP packets the copier built itself at the
// datalink: an AF_PACKET datagram socket, addressed to the next hop's MAC
// address, which the kernel's neighbour table gives (netlink). Packets
// sent so never pass the host's IP output path: no netfilter OUTPUT or
// POSTROUTING rule, no conntrack entry (a copier forging thousands of
// client flows fills prod's conntrack table through raw IP sockets, and
// prod's own firewall refuses them with EPERM). The interface's qdiscs
// and tc filters still apply.
//
// It owns the packet sockets and the next-hop table; it never blocks
// (sends use MSG_DONTWAIT), never retains a packet, and never sends a
// packet whose next hop it has not resolved: those are counted and
// dropped, and resolution is asked of the kernel (a neighbour entry
// marked in use, NTF_USE, which sends the ARP or neighbour solicitation
// itself). It does not route: each destination's route is the kernel's.
package linksock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// hop is where packets for one destination go: out of ifindex, to mac.
type hop struct {
	ifindex int
	mac     [6]byte
	ok      bool // mac is a resolved neighbour
}

// hops maps destinations to their next hops; replaced whole, never
// changed, so senders read it without a lock.
type hops map[netip.Addr]hop

// Stats counts what the datalink path did besides sending.
type Stats struct {
	NoNeighbour uint64 // packets dropped: the next hop's MAC is not resolved (yet)
	NoRoute     uint64 // packets dropped: no route, or a destination not yet looked up
	Resolutions uint64 // neighbour resolutions asked of the kernel
	Refreshes   uint64 // next-hop table rebuilds
}

// maxDests bounds the next-hop table: the copier sends to its maps'
// targets, a handful; anything past this is refused.
const maxDests = 256

// refreshEvery is how often next hops are looked up again: a neighbour
// that changed its MAC, a route that moved, is followed within it.
const refreshEvery = time.Second

// Resolver keeps the next-hop table the senders read, for the
// destinations it was given and any packet asked for since.
type Resolver struct {
	table atomic.Pointer[hops]
	want  chan netip.Addr // destinations senders met that the table lacks

	// mu guards dests, the destinations looked up on every refresh.
	mu    sync.Mutex
	dests map[netip.Addr]struct{}

	noNeigh, noRoute, resolutions, refreshes atomic.Uint64
	nl                                       *netlink.Handle
	log                                      *slog.Logger
}

// NewResolver looks up the next hops of dests once, asking the kernel to
// resolve missing neighbours and waiting up to wait for them; Run keeps
// the table fresh afterwards.
func NewResolver(dests []netip.Addr, wait time.Duration, log *slog.Logger) (*Resolver, error) {
	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open netlink: %w", err)
	}
	r := &Resolver{want: make(chan netip.Addr, 64), dests: make(map[netip.Addr]struct{}), nl: nl, log: log}
	for _, d := range dests {
		r.dests[d.Unmap()] = struct{}{}
	}
	empty := hops{}
	r.table.Store(&empty)
	deadline := time.Now().Add(wait)
	for {
		missing := r.refresh()
		if missing == 0 || time.Now().After(deadline) {
			if missing > 0 {
				log.Warn("datalink send: next hops not resolved yet; their packets are dropped until they are", "unresolved", missing)
			}
			return r, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Run refreshes the table every refreshEvery, and at once when a sender
// met a destination the table lacks, until ctx is done.
func (r *Resolver) Run(ctx context.Context) {
	t := time.NewTicker(refreshEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case d := <-r.want:
			r.mu.Lock()
			if len(r.dests) < maxDests {
				r.dests[d] = struct{}{}
			}
			r.mu.Unlock()
			r.refresh()
		case <-t.C:
			r.refresh()
		}
	}
}

// Close releases the netlink handle; call it after Run returned.
func (r *Resolver) Close() { r.nl.Close() }

// Stats returns the counters.
func (r *Resolver) Stats() Stats {
	return Stats{NoNeighbour: r.noNeigh.Load(), NoRoute: r.noRoute.Load(),
		Resolutions: r.resolutions.Load(), Refreshes: r.refreshes.Load()}
}

// refresh rebuilds the table and returns how many destinations lack a
// resolved next hop.
func (r *Resolver) refresh() (missing int) {
	r.mu.Lock()
	dests := make([]netip.Addr, 0, len(r.dests))
	for d := range r.dests {
		dests = append(dests, d)
	}
	r.mu.Unlock()
	t := make(hops, len(dests))
	for _, d := range dests {
		h, err := r.lookup(d)
		if err != nil {
			missing++
			continue // absent: its packets count as no route
		}
		if !h.ok {
			missing++
		}
		t[d] = h
	}
	r.table.Store(&t)
	r.refreshes.Add(1)
	return missing
}

// usable are the neighbour states whose MAC may be used.
const usable = netlink.NUD_REACHABLE | netlink.NUD_STALE | netlink.NUD_DELAY | netlink.NUD_PROBE |
	netlink.NUD_PERMANENT | netlink.NUD_NOARP

// lookup finds d's route and its next hop's neighbour entry, asking the
// kernel to resolve it when it is missing or failed.
func (r *Resolver) lookup(d netip.Addr) (hop, error) {
	routes, err := r.nl.RouteGet(d.AsSlice())
	if err != nil || len(routes) == 0 {
		return hop{}, fmt.Errorf("route to %s: %w", d, err)
	}
	rt := routes[0]
	if rt.Type != unix.RTN_UNICAST && rt.Type != 0 {
		return hop{}, fmt.Errorf("route to %s is not unicast (type %d)", d, rt.Type)
	}
	next := d
	if gw, ok := netip.AddrFromSlice(rt.Gw); ok && gw.IsValid() && !gw.IsUnspecified() {
		next = gw.Unmap()
	}
	h := hop{ifindex: rt.LinkIndex}
	family := netlink.FAMILY_V4
	if next.Is6() {
		family = netlink.FAMILY_V6
	}
	neighs, err := r.nl.NeighList(rt.LinkIndex, family)
	if err != nil {
		return h, fmt.Errorf("neighbours on link %d: %w", rt.LinkIndex, err)
	}
	for _, n := range neighs {
		a, ok := netip.AddrFromSlice(n.IP)
		if !ok || a.Unmap() != next {
			continue
		}
		if n.State&usable != 0 && len(n.HardwareAddr) == 6 {
			copy(h.mac[:], n.HardwareAddr)
			h.ok = true
			return h, nil
		}
	}
	r.resolve(rt.LinkIndex, next, family)
	return h, nil
}

// resolve asks the kernel to resolve next on link: a neighbour entry
// marked as used (NTF_USE) makes it send the ARP request or neighbour
// solicitation as if a packet were waiting.
func (r *Resolver) resolve(link int, next netip.Addr, family int) {
	r.resolutions.Add(1)
	n := &netlink.Neigh{LinkIndex: link, Family: family, IP: net.IP(next.AsSlice()),
		State: netlink.NUD_NONE, Flags: netlink.NTF_USE}
	if err := r.nl.NeighSet(n); err != nil {
		r.log.Debug("ask neighbour resolution", "next_hop", next, "err", err)
	}
}

// ErrNoNeighbour is returned for a packet whose next hop's MAC is not
// resolved; ErrNoRoute for one whose destination has no next hop known.
var (
	ErrNoNeighbour = errors.New("next hop not resolved")
	ErrNoRoute     = errors.New("no next hop for destination")
)

// Sender is one packet socket. It is not safe for concurrent use: give
// each worker its own, all sharing one Resolver.
type Sender struct {
	fd int
	r  *Resolver
	sa unix.RawSockaddrLinklayer
}

// sndBuf is the socket send buffer asked for, as rawsock's.
const sndBuf = 4 << 20

// Open opens a packet socket sending through r's next hops. It needs
// CAP_NET_RAW. Protocol 0: the socket receives nothing.
func Open(r *Resolver) (*Sender, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open packet socket (needs CAP_NET_RAW): %w", err)
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sndBuf) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, sndBuf)
	}
	s := &Sender{fd: fd, r: r}
	s.sa.Family = unix.AF_PACKET
	s.sa.Halen = 6
	return s, nil
}

// Send transmits one IPv4 or IPv6 packet to its destination's next hop.
func (s *Sender) Send(pkt []byte) error {
	h, proto, err := s.nextHop(pkt)
	if err != nil {
		return err
	}
	s.sa.Protocol = htons(proto)
	s.sa.Ifindex = int32(h.ifindex)
	copy(s.sa.Addr[:6], h.mac[:])
	// Raw for the reason rawsock gives: MSG_DONTWAIT never sleeps.
	_, _, errno := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(s.fd),
		uintptr(unsafe.Pointer(&pkt[0])), uintptr(len(pkt)), unix.MSG_DONTWAIT,
		uintptr(unsafe.Pointer(&s.sa)), unix.SizeofSockaddrLinklayer)
	if errno != 0 {
		return errno
	}
	return nil
}

// Close closes the socket.
func (s *Sender) Close() error {
	if s.fd >= 0 {
		unix.Close(s.fd)
		s.fd = -1
	}
	return nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
