package doctor

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"

	"github.com/tcpshadow/tcpshadow/intercept/divert"
)

// This file checks the shadow host of the two-host deployment, where the
// agent runs on the shadow (intercept --local): its nftables rules, its
// queue, and that nothing to a pool can leave the host.

// LocalHost is what the two-host checks read from the system.
type LocalHost interface {
	// RouteTo returns the route the kernel picks for a packet to dst, or
	// ErrNoRoute.
	RouteTo(dst netip.Addr) (Route, error)
	// DivertRules reads the agent's nftables table back.
	DivertRules() (divert.Installed, error)
	// Queue returns the kernel's view of NFQUEUE num, or
	// divert.ErrNotBound.
	Queue(num uint16) (divert.KernelQueue, error)
}

// ShadowLocalConfig says what to check on a shadow whose agent runs on
// it.
type ShadowLocalConfig struct {
	To    []netip.Prefix // the client pools the agent diverts
	Queue uint16         // the NFQUEUE number the agent was given
}

// conntrackPriority is where conntrack runs on the output hook: the
// divert chain must come before it.
const conntrackPriority = -200

// ShadowLocal checks the two-host shadow: the table and its chain at the
// right hook and priority, one rule per pool queueing (without bypass) to
// the agent's queue, the queue bound by an agent and not losing packets,
// a route for each pool (the shadow cannot answer without one), and, from
// these, that nothing to a pool leaves the host.
func ShadowLocal(h LocalHost, c ShadowLocalConfig) Report {
	var rep Report
	fix := "tcpshadow intercept --local"
	for _, p := range c.To {
		fix += " --to " + p.String()
	}
	if c.Queue != divert.DefaultQueueNum {
		fix += fmt.Sprintf(" --queue-num %d", c.Queue)
	}
	in, err := h.DivertRules()
	chainOK := false
	r := Result{Check: "rules inet " + divert.TableName, Fix: fix + " (the agent installs them)"}
	switch {
	case errors.Is(err, ErrNotChecked):
		return rep
	case err != nil:
		r.Status, r.Detail = Fail, fmt.Sprintf("cannot read the nftables rules: %v", err)
	case !in.Table:
		r.Status, r.Detail = Fail, "table missing: no agent runs here (or it was stopped), so replies to the pools leave by their route"
	case !in.Chain:
		r.Status, r.Detail = Fail, "chain "+divert.ChainName+" missing from the table"
	case in.Hook != *nftables.ChainHookOutput || in.Type != nftables.ChainTypeFilter:
		r.Status, r.Detail = Fail, fmt.Sprintf("chain %s on hook %d type %s, want the output hook, type filter", divert.ChainName, in.Hook, in.Type)
	case in.Priority >= conntrackPriority:
		r.Status, r.Detail = Fail, fmt.Sprintf("chain %s at priority %d: after conntrack (%d), so diverted replies fill the conntrack table", divert.ChainName, in.Priority, conntrackPriority)
	default:
		chainOK = true
		r.Detail = fmt.Sprintf("chain %s on the output hook at priority %d, before conntrack and NAT", divert.ChainName, in.Priority)
		if len(in.Earlier) > 0 {
			r.Status = Warn
			r.Detail += "; these run before it and see the pools' packets first: " + strings.Join(in.Earlier, ", ")
			r.Fix = "make sure none of them changes or queues packets to the pools"
		}
	}
	rep = append(rep, r)
	rules := make(map[netip.Prefix]divert.PoolRule)
	for _, pr := range in.Rules {
		if pr.Pool.IsValid() {
			if _, dup := rules[pr.Pool]; !dup {
				rules[pr.Pool] = pr
			}
		}
	}
	diverted := make(map[netip.Prefix]bool)
	for _, p := range c.To {
		rr := Result{Check: "divert " + p.String(), Fix: fix}
		pr, ok := rules[p]
		switch {
		case err != nil || !in.Table:
			rr.Status, rr.Detail = Fail, "no rule: the rules are missing (see above)"
		case !ok:
			rr.Status, rr.Detail = Fail, "no rule for this pool: its packets leave by their route (was the agent given --to "+p.String()+"?)"
		case !pr.Queued:
			rr.Status, rr.Detail = Fail, "the rule queues nothing"
		case pr.Queue != c.Queue:
			rr.Status, rr.Detail = Fail, fmt.Sprintf("the rule queues to %d, not %d", pr.Queue, c.Queue)
			rr.Fix = fmt.Sprintf("give doctor --queue-num %d, or the agent --queue-num %d", pr.Queue, c.Queue)
		case pr.Bypass:
			rr.Status, rr.Detail = Fail, "the rule's queue has the bypass flag: with no agent bound packets pass, and leave"
		default:
			diverted[p] = chainOK
			rr.Detail = fmt.Sprintf("queued to %d without bypass; %d packets diverted so far", pr.Queue, pr.Packets)
		}
		rep = append(rep, rr)
	}
	rep = append(rep, queueCheck(h, c.Queue, fix))
	for _, p := range c.To {
		rep = append(rep, localRoute(h, p, diverted[p]))
	}
	return rep
}

// queueCheck checks that an agent is bound to the queue and that the
// kernel drops none of its packets.
func queueCheck(h LocalHost, num uint16, fix string) Result {
	r := Result{Check: fmt.Sprintf("queue %d", num), Fix: fix}
	k, err := h.Queue(num)
	switch {
	case errors.Is(err, divert.ErrNotBound):
		r.Status, r.Detail = Fail, "no agent bound: the rules drop every packet to the pools (nothing leaks, nothing is copied)"
	case err != nil:
		r.Status, r.Detail = Fail, fmt.Sprintf("cannot read the kernel's queues: %v", err)
	case k.CopyMode != 2 || k.CopyRange < 60:
		r.Status, r.Detail = Fail, fmt.Sprintf("bound (port %d) but copying mode %d, %d bytes: the agent cannot read the headers", k.PortID, k.CopyMode, k.CopyRange)
	case k.Dropped > 0 || k.UserDropped > 0:
		r.Status = Warn
		r.Detail = fmt.Sprintf("bound (port %d); the kernel dropped %d packets with the queue full and %d with the agent's socket full: those replies were not relayed", k.PortID, k.Dropped, k.UserDropped)
		r.Fix = "give the agent a larger --queue-len, or more CPU (--max-cpu)"
	default:
		r.Detail = fmt.Sprintf("bound by an agent (port %d), %d held, none dropped", k.PortID, k.Total)
	}
	return r
}

// localRoute checks that the shadow has a route for the pool (it cannot
// answer a copied connection without one) and that, having one, the rule
// takes the packets before they use it.
func localRoute(h LocalHost, p netip.Prefix, diverted bool) Result {
	r := Result{Check: "no_leak " + p.String(), Fix: "ip route add " + p.String() + " via GATEWAY (any route will do; the agent's rule takes the packets first)"}
	rt, err := h.RouteTo(probeAddr(p))
	switch {
	case errors.Is(err, ErrNoRoute):
		r.Status, r.Detail = Fail, "no route for the pool: the shadow cannot answer the copies (its SYN-ACKs fail before the rules)"
	case err != nil:
		r.Status, r.Detail = Fail, fmt.Sprintf("cannot look up the route to %v: %v", p, err)
	case rt.Kind != Unicast:
		r.Status, r.Detail = Fail, fmt.Sprintf("a %v route for the pool: the shadow cannot answer the copies", rt.Kind)
	case !diverted:
		r.Status, r.Detail = Fail, "replies to the pool leave "+rt.String()+": no working rule takes them (see above)"
		r.Fix = ""
	default:
		r.Detail = "the route (" + rt.String() + ") is never used: the rule takes every packet to the pool first"
		r.Fix = ""
	}
	return r
}
