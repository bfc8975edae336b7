package doctor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"

	"github.com/tcpshadow/tcpshadow/intercept"
	"github.com/tcpshadow/tcpshadow/intercept/wire"
)

// AssistConfig says what to check on the assist host.
type AssistConfig struct {
	Iface      string         // where the shadow's replies arrive; "" skips the capture check
	To         []netip.Prefix // client pool or client range the replies are addressed to
	ListenPort uint16         // the agent's port; 0 skips the listener check
}

// Assist checks the assist host: replies must die here (no forwarding,
// and no ICMPv6 unreachable for them), the agent must be able to capture
// them, and the agent should be the one listening on its port.
func Assist(h Host, c AssistConfig) Report {
	rep := Report{ipv4Forwarding(h, c.Iface)}
	if r, ok := ipv6Forwarding(h); ok {
		rep = append(rep, r)
	}
	for _, p := range c.To {
		if p.Addr().Is6() {
			rep = append(rep, blackhole(h, p))
		}
	}
	if c.Iface != "" {
		rep = append(rep, captureCheck(h, c.Iface))
	}
	if c.ListenPort != 0 {
		rep = append(rep, agentListener(h, c.ListenPort, c.Iface))
	}
	return rep
}

const forwardHarm = "this host forwards the shadow's replies to the real clients instead of dropping them"

func ipv4Forwarding(h Host, iface string) Result {
	r := Result{Check: "ip_forward", Fix: "sysctl -w net.ipv4.ip_forward=0"}
	paths := []string{"net/ipv4/ip_forward"}
	if iface != "" && iface != "any" {
		// The kernel decides per input interface; ip_forward=0 resets
		// them all, but one can be turned back on alone.
		paths = append(paths, "net/ipv4/conf/"+iface+"/forwarding")
	}
	var on, off []string
	for i, p := range paths {
		v, err := h.Sysctl(p)
		switch {
		case err != nil && i > 0:
			continue // no such interface: the capture check says so
		case err != nil:
			r.Status, r.Detail = Warn, fmt.Sprintf("cannot read %s: %v", sysctlName(p), err)
			return r
		case v != 0:
			on = append(on, fmt.Sprintf("%s=%d", sysctlName(p), v))
		default:
			off = append(off, fmt.Sprintf("%s=%d", sysctlName(p), v))
		}
	}
	if len(on) > 0 {
		r.Status, r.Detail = Fail, strings.Join(on, ", ")+": "+forwardHarm
		return r
	}
	r.Detail = strings.Join(off, ", ") + ": replies die here"
	return r
}

func ipv6Forwarding(h Host) (Result, bool) {
	r := Result{Check: "ipv6_forwarding", Fix: "sysctl -w net.ipv6.conf.all.forwarding=0"}
	v, err := h.Sysctl("net/ipv6/conf/all/forwarding")
	switch {
	case errors.Is(err, fs.ErrNotExist):
		r.Detail = "IPv6 is disabled here"
	case err != nil:
		r.Status, r.Detail = Warn, fmt.Sprintf("cannot read net.ipv6.conf.all.forwarding: %v", err)
	case v != 0:
		r.Status, r.Detail = Fail, fmt.Sprintf("net.ipv6.conf.all.forwarding=%d: %s", v, forwardHarm)
	default:
		r.Detail = "net.ipv6.conf.all.forwarding=0: replies die here"
	}
	return r, true
}

// blackhole checks what happens to IPv6 replies for p: without forwarding
// the kernel drops those it has a route for silently, but answers those
// it has none for (or an unreachable route) with ICMPv6 unreachable, and
// the shadow then aborts the connection.
func blackhole(h Host, p netip.Prefix) Result {
	r := Result{Check: "blackhole " + p.String(), Fix: "ip -6 route replace blackhole " + p.String()}
	const abort = "the kernel answers each reply with ICMPv6 unreachable, which aborts the shadow's connections"
	rt, err := h.RouteTo(probeAddr(p))
	switch {
	case errors.Is(err, ErrNoRoute):
		r.Status, r.Detail = Warn, "no route: "+abort
	case err != nil:
		r.Status, r.Detail = Warn, fmt.Sprintf("cannot look up the route to %v: %v", p, err)
	case rt.Kind == Blackhole:
		r.Detail = "blackhole route: replies are dropped silently"
	case rt.Kind == Unicast:
		r.Detail = fmt.Sprintf("routed %v with forwarding off: replies are dropped silently", rt)
	case rt.Kind == Local:
		r.Status, r.Detail, r.Fix = Fail, "addresses in it are local here: this host's stack answers the shadow's replies with resets", ""
	default:
		r.Status, r.Detail = Warn, rt.Kind.String()+" route: "+abort
	}
	return r
}

func captureCheck(h Host, iface string) Result {
	r := Result{Check: "capture " + iface}
	if iface != "any" {
		if err := h.Link(iface); err != nil {
			r.Status, r.Detail = Fail, fmt.Sprintf("no interface %s here (ip -br link lists them): %v", iface, err)
			return r
		}
	}
	if err := h.CanCapture(iface); err != nil {
		r.Status, r.Detail, r.Fix = Fail, fmt.Sprintf("cannot capture: %v (capturing needs CAP_NET_RAW)", err), capFix
		return r
	}
	r.Detail = "a live capture opens"
	return r
}

func agentListener(h Host, port uint16, iface string) Result {
	r := Result{Check: "agent_listen :" + strconv.Itoa(int(port))}
	ls, err := h.Listeners(port)
	if err != nil {
		r.Status, r.Detail = Warn, fmt.Sprintf("cannot list listening sockets: %v", err)
		return r
	}
	if len(ls) == 0 {
		if iface == "" {
			iface = "IFACE"
		}
		r.Status = Warn
		r.Detail = fmt.Sprintf("nothing listens on TCP port %d: the agent is not running (or listens on another port)", port)
		r.Fix = fmt.Sprintf("tcpshadow intercept --iface %s --listen :%d", iface, port)
		return r
	}
	for _, l := range ls {
		if l.Comm == "tcpshadow" {
			r.Detail = fmt.Sprintf("tcpshadow (pid %d) listens on %v", l.PID, l.Addr)
			return r
		}
	}
	l := ls[0]
	if l.PID == 0 {
		r.Status, r.Detail = Warn, fmt.Sprintf("something listens on %v, and its process is not visible here", l.Addr)
		return r
	}
	r.Status = Fail
	r.Detail = fmt.Sprintf("%s (pid %d) holds %v: the agent cannot listen there", l.Comm, l.PID, l.Addr)
	return r
}

// ShadowConfig says what to check on the shadow host.
type ShadowConfig struct {
	Via []netip.Addr   // the assist host, at most one per address family
	To  []netip.Prefix // client pool or client range; each has a Via of its family
	// Prod is prod's address as the shadow sees it: the forged copies
	// arrive on the interface that leads there. Invalid: assume the
	// interface towards the assist.
	Prod netip.Addr
}

func (c *ShadowConfig) via(p netip.Prefix) netip.Addr {
	for _, v := range c.Via {
		if v.Is4() == p.Addr().Is4() {
			return v
		}
	}
	return netip.Addr{}
}

// Shadow checks the shadow host: replies to the forged addresses must be
// routed to the assist host, and rp_filter must not drop the forged
// sources.
func Shadow(h Host, c ShadowConfig) Report {
	var rep Report
	for _, p := range c.To {
		via := c.via(p)
		rt, routed, res := replyRoute(h, p, via)
		rep = append(rep, res)
		if p.Addr().Is4() {
			rep = append(rep, rpFilter(h, p, rt, routed, via, c.Prod))
		}
	}
	if r, ok := inputPolicy(h, c.To); ok {
		rep = append(rep, r)
	}
	return rep
}

// replyRoute checks the route the kernel picks for a reply to p. routed
// reports a unicast route (whatever its gateway).
func replyRoute(h Host, p netip.Prefix, via netip.Addr) (rt Route, routed bool, r Result) {
	r = Result{Check: "route " + p.String(), Fix: fmt.Sprintf("tcpshadow route add --via %v --to %v", via, p)}
	rt, err := h.RouteTo(probeAddr(p))
	switch {
	case errors.Is(err, ErrNoRoute):
		r.Status, r.Detail = Fail, "route missing: replies to "+p.String()+" have no route, so they never reach the assist host"
	case err != nil:
		r.Status, r.Detail = Fail, fmt.Sprintf("route missing: cannot look up the route to %v: %v", p, err)
	case rt.Kind != Unicast:
		r.Status, r.Detail = Fail, fmt.Sprintf("route missing: replies to %v hit a %v route, not the assist host", p, rt.Kind)
	case rt.Gateway != via:
		r.Status, r.Detail = Fail, fmt.Sprintf("route points elsewhere: %v, not via the assist host %v", rt, via)
		routed = true
	default:
		r.Detail = "replies go " + rt.String()
		routed = true
	}
	return rt, routed, r
}

// rpFilter checks that reverse-path filtering lets the forged sources in.
// The kernel applies max(conf.all.rp_filter, conf.IFACE.rp_filter) of the
// interface a packet arrives on: strict (1) drops a packet whose source is
// routed out of another interface, loose (2) only one whose source has no
// route at all.
func rpFilter(h Host, p netip.Prefix, rt Route, routed bool, via, prod netip.Addr) Result {
	r := Result{Check: "rp_filter " + p.String()}
	arrival, assumed := "", false
	if prod.IsValid() {
		if pr, err := h.RouteTo(prod); err == nil {
			arrival = pr.Dev
		}
	} else if vr, err := h.RouteTo(via); err == nil {
		arrival, assumed = vr.Dev, true
	}
	all, err := h.Sysctl("net/ipv4/conf/all/rp_filter")
	if err != nil {
		r.Status, r.Detail = Warn, fmt.Sprintf("cannot read net.ipv4.conf.all.rp_filter: %v", err)
		return r
	}
	eff, values := all, fmt.Sprintf("all=%d", all)
	if arrival != "" {
		v, err := h.Sysctl("net/ipv4/conf/" + arrival + "/rp_filter")
		if err == nil {
			eff = max(eff, v)
			values += fmt.Sprintf(", %s=%d", arrival, v)
		}
	}
	fixIface := arrival
	if fixIface == "" {
		fixIface = "IFACE"
	}
	r.Fix = fmt.Sprintf("sysctl -w net.ipv4.conf.all.rp_filter=2 %s=2", sysctlName("net/ipv4/conf/"+fixIface+"/rp_filter"))
	switch {
	case eff == 0:
		r.Detail = fmt.Sprintf("off (%s): forged sources are accepted", values)
		return r
	case !routed:
		r.Status = Warn
		r.Detail = fmt.Sprintf("rp_filter=%d (%s) drops forged sources from %v while they have no route (see the route check)", eff, values, p)
		r.Fix = ""
		return r
	case eff == 2:
		r.Detail = fmt.Sprintf("loose (%s): forged sources with a route are accepted", values)
		return r
	case arrival == "":
		r.Status = Warn
		r.Detail = fmt.Sprintf("strict (%s): forged sources from %v are dropped unless the route to them leaves by the interface they arrive on, which is unknown here (give --prod)", values, p)
		return r
	case rt.Dev != arrival:
		r.Status = Fail
		r.Detail = fmt.Sprintf("strict (%s): copies from %v arrive on %s but the route back to them leaves by %s, so the kernel drops them", values, p, arrival, rt.Dev)
		if assumed {
			r.Detail += fmt.Sprintf(" (assuming copies arrive on %s, the interface towards %v; give --prod to check)", arrival, via)
		}
		return r
	}
	r.Status = Warn
	r.Detail = fmt.Sprintf("strict (%s): works only while the route to %v leaves by %s, the interface copies arrive on", values, p, arrival)
	if assumed {
		r.Detail += fmt.Sprintf(" (assumed: the interface towards %v; give --prod to check)", via)
	}
	r.Detail += "; loose is safer"
	return r
}

// inputPolicy warns about input chains that drop by default: they must
// accept the forged sources (the copies arrive from addresses nobody
// configured them for).
func inputPolicy(h Host, to []netip.Prefix) (Result, bool) {
	r := Result{Check: "input_policy"}
	chains, err := h.InputDropChains()
	switch {
	case errors.Is(err, ErrNotChecked):
		return r, false
	case err != nil:
		r.Status, r.Detail = Warn, fmt.Sprintf("cannot list nftables chains: %v", err)
		return r, true
	case len(chains) == 0:
		r.Detail = "no input chain drops by default"
		return r, true
	}
	r.Status = Warn
	r.Detail = fmt.Sprintf("input chain %s has policy drop: it must accept the forged sources", strings.Join(chains, ", "))
	fs := strings.Fields(chains[0])
	for _, p := range to {
		if len(fs) != 3 {
			break
		}
		proto := "ip"
		if p.Addr().Is6() {
			proto = "ip6"
		}
		if fs[0] == "inet" || fs[0] == proto {
			r.Fix = fmt.Sprintf("nft insert rule %s %s %s %s saddr %v accept", fs[0], fs[1], fs[2], proto, p)
			break
		}
	}
	return r, true
}

// ProdConfig says what to check on the prod host.
type ProdConfig struct {
	Iface string // capture interface
	Agent string // the agent's host:port
	// ProbeAgent connects to the agent and completes the handshake; it
	// returns the name the agent announced (intercept.Probe).
	ProbeAgent func(ctx context.Context) (string, error)
	// Send is copy's --send: SendRaw (also when empty) or SendDatalink.
	Send string
	// CheckMirror, on a mirror target, replaces the capture checks: it
	// listens to the session (ListenMirror, MirrorResult).
	CheckMirror func(ctx context.Context) Result
}

// Prod checks the prod host: capture and raw sends are permitted, the
// capture interface does not merge segments (or, on a mirror target, the
// session delivers whole frames), what raw sends would pass, and the
// agent answers.
func Prod(ctx context.Context, h Host, c ProdConfig) Report {
	var rep Report
	if c.CheckMirror != nil {
		rep = append(rep, c.CheckMirror(ctx))
	} else {
		rep = append(rep, captureCheck(h, c.Iface))
		if c.Iface != "any" && h.Link(c.Iface) == nil {
			rep = append(rep, offloads(h, c.Iface), bigTCP(h, c.Iface))
		}
	}
	rep = append(rep, rawSocket(h), SendPath(h, c.Send))
	if c.ProbeAgent != nil {
		name, err := c.ProbeAgent(ctx)
		rep = append(rep, AgentResult(c.Agent, name, err))
	}
	return rep
}

func offloads(h Host, iface string) Result {
	r := Result{Check: "offload " + iface, Fix: fmt.Sprintf("ethtool -K %s gro off lro off", iface)}
	gro, lro, err := h.Offloads(iface)
	if err != nil {
		r.Status, r.Detail = Warn, fmt.Sprintf("cannot read GRO/LRO: %v", err)
		return r
	}
	if !gro && !lro {
		r.Detail = "GRO and LRO off: captures see segments as clients sent them"
		return r
	}
	var on []string
	if gro {
		on = append(on, "GRO")
	}
	if lro {
		on = append(on, "LRO")
	}
	r.Status = Warn
	r.Detail = strings.Join(on, " and ") + " on: the kernel merges client segments into packets of up to 64 KiB " +
		"before the capture sees them; tcpshadow splits them to --mss anyway, but the shadow sees other segment boundaries than prod"
	return r
}

// bigTCP checks that GRO builds no packet past 64 KiB: such a packet's IP
// length field cannot hold its size (BIG TCP), and the copier ignores it
// (ignored_big_packet), losing the data it carries.
func bigTCP(h Host, iface string) Result {
	r := Result{Check: "gro_max_size " + iface}
	n, err := h.GROMaxSize(iface)
	switch {
	case err != nil:
		r.Status, r.Detail = Warn, fmt.Sprintf("cannot read gro_max_size: %v", err)
	case n > 65536:
		r.Status = Fail
		r.Detail = fmt.Sprintf("gro_max_size %d: BIG TCP merges client segments into packets past 64 KiB, "+
			"which no IP length field describes; the copier ignores them (ignored_big_packet) and their data never reaches the shadow", n)
		r.Fix = fmt.Sprintf("ip link set dev %s gro_max_size 65536 gro_ipv4_max_size 65536", iface)
	default:
		r.Detail = fmt.Sprintf("gro_max_size %d: no packet past 64 KiB", n)
	}
	return r
}

func rawSocket(h Host) Result {
	r := Result{Check: "raw_socket"}
	if err := h.CanSendRaw(); err != nil {
		r.Status, r.Detail, r.Fix = Fail, fmt.Sprintf("cannot open raw IP sockets: %v", err), capFix
		if !strings.Contains(r.Detail, "CAP_NET_RAW") {
			r.Detail += " (sending forged packets needs CAP_NET_RAW)"
		}
		return r
	}
	r.Detail = "raw IP sockets open: forged sources can be sent"
	return r
}

// AgentResult judges a connection attempt to the agent at addr: name and
// err are what intercept.Probe returned.
func AgentResult(addr, name string, err error) Result {
	r := Result{Check: "agent " + addr}
	var pe *wire.PeerError
	switch {
	case err == nil:
		r.Detail = fmt.Sprintf("agent %q accepted the handshake (protocol v%d)", name, wire.Version)
		return r
	case errors.Is(err, intercept.ErrUnreachable):
		r.Detail = fmt.Sprintf("agent unreachable: %v (is tcpshadow intercept running on the assist host, listening on that port, and is the port open from here?)",
			unwrapUnreachable(err))
	case errors.As(err, &pe):
		r.Detail = "agent refused: " + pe.Code.String() + ": " + strings.TrimPrefix(pe.Msg, "refused: ")
		switch pe.Code {
		case wire.CodeAuth:
			r.Detail += " (--secret-file must hold the agent's secret, or both sides none)"
		case wire.CodeVersion:
			r.Detail += " (run the same tcpshadow version on both hosts)"
		case wire.CodeNotAllowed:
			r.Detail += " (add this host's address to the agent's --allow)"
		}
	case errors.Is(err, intercept.ErrTLS):
		r.Detail = fmt.Sprintf("TLS with the agent failed: %v (does the agent run with --tls-cert? --tls-ca must hold the CA that signed it, "+
			"and the certificate must name --tls-server-name, or the --intercept host by default)", err)
	case hungUp(err):
		r.Detail = fmt.Sprintf("agent closed the connection without a word: %v (if the agent runs with --tls-cert, pass --tls-ca)", err)
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		r.Detail = fmt.Sprintf("agent did not complete the handshake in time: %v (is something else listening there?)", err)
	default:
		r.Detail = fmt.Sprintf("agent handshake failed: %v", err)
	}
	r.Status = Fail
	return r
}

// unwrapUnreachable drops the "agent unreachable: " the error starts with,
// which the detail already says.
func unwrapUnreachable(err error) error {
	var op *net.OpError
	if errors.As(err, &op) {
		return op
	}
	return err
}

// hungUp reports whether the agent closed the connection before saying
// anything, as a TLS agent does to a plain hello.
func hungUp(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
