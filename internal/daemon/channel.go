package daemon

import (
	"net/netip"

	"github.com/tcpshadow/tcpshadow/intercept"
	"github.com/tcpshadow/tcpshadow/intercept/wire"
)

// anyPools is what a copy daemon that forges no address announces: it
// registers its clients' real addresses, which may be any.
var anyPools = []wire.Pool{
	{Prefix: netip.PrefixFrom(netip.IPv4Unspecified(), 0), Slots: 1},
	{Prefix: netip.PrefixFrom(netip.IPv6Unspecified(), 0), Slots: 1},
}

// ClientConfig returns the control channel's configuration: Client, with
// what the copier announces to the agent derived from the engine. The
// pools are the engine's client pool (its slot included), or the whole
// address space without one; the flow idle time is the longest a session
// goes without a reply from the shadow while it lives (the longest of its
// idle, response and handshake timeouts, plus the linger of an ended
// session), so that the agent, which forgets flows idle for twice as
// long, never forgets a live one.
func (c *CopyConfig) ClientConfig() intercept.ClientConfig {
	cc := c.Client
	e := c.EngineConfig()
	e.Defaults()
	if cc.FlowIdle == 0 {
		cc.FlowIdle = max(e.IdleTimeout, e.ResponseTimeout, e.HandshakeTimeout) + e.Linger
	}
	// The shadow's answers are compared from the first bytes the agent
	// relays of each reply: one knob for both.
	cc.ReplyPrefix = e.ComparePrefix
	if e.ComparePrefix > 0 && cc.H2Ports == nil {
		cc.H2Ports = c.h2Ports()
	}
	cc.Tunnel = c.tunnel
	if cc.Pools != nil {
		return cc
	}
	if e.Pool == nil {
		cc.Pools = anyPools
		return cc
	}
	slot, slots := e.Pool.Slot()
	for _, p := range e.Pool.Prefixes() {
		cc.Pools = append(cc.Pools, wire.Pool{Prefix: p, Slot: uint16(slot), Slots: uint16(slots)})
	}
	return cc
}
