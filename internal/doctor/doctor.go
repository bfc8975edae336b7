// Package doctor checks the host it runs on for one tcpshadow role (prod,
// shadow, the shadow with the agent on it, or assist) and names the
// classic deployment failures: forged
// packets dropped on the way (rp_filter), replies routed wrongly or
// forwarded to real clients, missing capabilities, an agent that cannot be
// reached or refuses, offloads that merge captured packets. Each check
// gives one Result: ok, warn or FAIL, with the exact command that fixes it.
//
// The checks read the host through the Host interface (System is the live
// one; tests fake it) and change nothing on it. The one exception is the
// prod role's Probe, which sends one synthetic connection to the shadow
// and resets it.
package doctor

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Status is a check's verdict.
type Status uint8

const (
	OK   Status = iota // nothing to do
	Warn               // works, but fragile or lossy; the fix is advised
	Fail               // tcpshadow will not work (or will harm) until fixed
)

func (s Status) String() string {
	switch s {
	case OK:
		return "ok"
	case Warn:
		return "warn"
	case Fail:
		return "FAIL"
	}
	return fmt.Sprintf("status(%d)", uint8(s))
}

// Result is one check's outcome.
type Result struct {
	Status Status
	// Check names what was checked: a word, then what it applies to
	// ("ip_forward", "route 198.19.0.0/16"). Stable: scripts match it.
	Check  string
	Detail string
	// Fix is the exact command that fixes a warn or FAIL; empty if there
	// is none to give.
	Fix string
}

// String renders the result as one line:
//
//	FAIL route 198.19.0.0/16: route missing; fix: tcpshadow route add --via 198.18.1.3 --to 198.19.0.0/16
func (r Result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-4s %s: %s", r.Status, r.Check, r.Detail)
	if r.Fix != "" && r.Status != OK {
		b.WriteString("; fix: ")
		b.WriteString(r.Fix)
	}
	return b.String()
}

// Report is the results of a run, in the order the checks ran.
type Report []Result

// Count returns how many results have status s.
func (rep Report) Count(s Status) int {
	n := 0
	for _, r := range rep {
		if r.Status == s {
			n++
		}
	}
	return n
}

// Summary says how many checks passed, warned and failed.
func (rep Report) Summary() string {
	return fmt.Sprintf("%d ok, %d warn, %d FAIL", rep.Count(OK), rep.Count(Warn), rep.Count(Fail))
}

// RouteKind is the type of the route the kernel picks for a destination.
type RouteKind uint8

const (
	Unicast     RouteKind = iota + 1 // forwarded, via a gateway or on-link
	Local                            // the address is this host's
	Blackhole                        // dropped silently
	Unreachable                      // dropped with ICMP unreachable
	Prohibit                         // dropped with ICMP administratively prohibited
)

func (k RouteKind) String() string {
	switch k {
	case Unicast:
		return "unicast"
	case Local:
		return "local"
	case Blackhole:
		return "blackhole"
	case Unreachable:
		return "unreachable"
	case Prohibit:
		return "prohibit"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Route is the route the kernel picks for one destination.
type Route struct {
	Kind    RouteKind
	Gateway netip.Addr // invalid when on-link
	Dev     string
}

func (r Route) String() string {
	switch {
	case r.Kind != Unicast:
		return r.Kind.String()
	case r.Gateway.IsValid():
		return "via " + r.Gateway.String() + " dev " + r.Dev
	}
	return "dev " + r.Dev + " (on-link, no gateway)"
}

// ErrNoRoute is returned by Host.RouteTo when no route matches.
var ErrNoRoute = errors.New("no route")

// ErrNotChecked is returned by a Host method whose tool is missing here;
// the check is then left out of the report.
var ErrNotChecked = errors.New("not checked")

// Listener is a process listening on a TCP port.
type Listener struct {
	Addr netip.AddrPort
	PID  int    // 0 when the owning process is not visible
	Comm string // process name (/proc/PID/comm)
}

// Host is what the checks read from the system they run on.
type Host interface {
	// Sysctl reads an integer sysctl; path is relative to /proc/sys with
	// slashes ("net/ipv4/ip_forward"). A missing one gives an error
	// matching fs.ErrNotExist.
	Sysctl(path string) (int, error)
	// RouteTo returns the route the kernel picks for a packet to dst, or
	// ErrNoRoute.
	RouteTo(dst netip.Addr) (Route, error)
	// Link returns an error if the interface does not exist.
	Link(name string) error
	// Offloads reports whether GRO and LRO are on for iface.
	Offloads(iface string) (gro, lro bool, err error)
	// GROMaxSize returns the largest packet GRO may build on iface (the
	// larger of IPv6's and IPv4's); past 65536 that is BIG TCP.
	GROMaxSize(iface string) (int, error)
	// CanCapture opens a live capture on iface and closes it.
	CanCapture(iface string) error
	// CanSendRaw opens the raw sockets the copy daemon sends with and
	// closes them.
	CanSendRaw() error
	// Listeners returns who listens on TCP port, in every address family.
	Listeners(port uint16) ([]Listener, error)
	// InputDropChains names the netfilter chains on the input hook whose
	// policy is drop, as "FAMILY TABLE CHAIN"; ErrNotChecked without nft.
	InputDropChains() ([]string, error)
}

// sysctlName renders a /proc/sys path as sysctl(8) takes it: dotted,
// unless a component (an interface name such as eth0.10) has a dot.
func sysctlName(path string) string {
	if strings.Contains(path, ".") {
		return path
	}
	return strings.ReplaceAll(path, "/", ".")
}

// probeAddr is the address a prefix's routes are looked up for: its first
// host address (the prefix address itself for a single host).
func probeAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr()
	if n := a.Next(); n.IsValid() && p.Contains(n) {
		return n
	}
	return a
}

// capFix is the command that grants a binary what capture and raw sends
// need without running as root.
const capFix = "setcap cap_net_raw+ep $(command -v tcpshadow)"
