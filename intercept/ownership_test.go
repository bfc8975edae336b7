package intercept

import (
	"net/netip"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// forgedPool holds the forged endpoint the tests' flows use.
var forgedPool = []wire.Pool{{Prefix: netip.MustParsePrefix("198.19.0.0/16"), Slots: 1}}

// register writes a sealed registration of flows on a raw session.
func registerRaw(t testing.TB, c interface{ Write([]byte) (int, error) }, seal *wire.Sealer, typ wire.MsgType, flows ...rewrite.Tuple) {
	t.Helper()
	if _, err := c.Write(sealed(seal, wire.AppendFlows(nil, typ, flows))); err != nil {
		t.Fatal(err)
	}
}

// TestRegistrationsOutsidePoolsRefused: a copy daemon registers only
// flows whose forged end lies in the pools it announced; replies to an
// address no pool holds are neither relayed nor parked.
func TestRegistrationsOutsidePoolsRefused(t *testing.T) {
	a, src, ln := probeAgent(t, AgentConfig{Secret: testSecret})
	c, _, seal := rawSession(t, ln, "prod", testSecret, forgedPool)
	ssh := rewrite.TupleOf(netip.MustParseAddrPort("198.18.0.7:51000"), netip.MustParseAddrPort("198.18.1.3:22"))
	registerRaw(t, c, seal, wire.TypeRegister, ssh, flow(1))
	waitAgent(t, a, "one refused, one registered", func(s AgentStats) bool { return s.FlowsOutsidePool == 1 && s.Flows == 1 })
	// The SSH session's packets, a SYN-ACK among them, concern nobody.
	seg := rewrite.Segment{Src: netip.MustParseAddrPort("198.18.1.3:22"), Dst: netip.MustParseAddrPort("198.18.0.7:51000"),
		Seq: 1, Ack: 1, Flags: rewrite.FlagSYN | rewrite.FlagACK, Window: 100}
	b := make([]byte, seg.Len())
	if _, err := seg.Put(b); err != nil {
		t.Fatal(err)
	}
	src.Push(b, time.Now())
	waitAgent(t, a, "the reply counted outside the pools", func(s AgentStats) bool { return s.OutsidePools == 1 && s.Parked == 0 })
}

// TestParkOnlySynAckAndRST: only the answers to a SYN may wait for their
// registration: a bare SYN (a scan) or a data segment to a pool address is
// not parked.
func TestParkOnlySynAckAndRST(t *testing.T) {
	a, src, ln := probeAgent(t, AgentConfig{Secret: testSecret})
	rawSession(t, ln, "prod", testSecret, forgedPool) // a live pool
	waitAgent(t, a, "peer", func(s AgentStats) bool { return s.Peers == 1 })
	for i, f := range []uint8{rewrite.FlagSYN, rewrite.FlagACK, rewrite.FlagSYN | rewrite.FlagACK, rewrite.FlagRST, rewrite.FlagRST | rewrite.FlagACK} {
		src.Push(reply(t, uint16(100+i), f, 0), time.Now())
	}
	waitAgent(t, a, "2 not parked, 3 parked", func(s AgentStats) bool { return s.NoOwner == 2 && s.Parked == 3 })
}

// TestFlowHeldByAnotherDaemonRefused: a flow another copy daemon holds is
// not taken from it (the replies stay its own); the same daemon
// reconnecting takes its flows back.
func TestFlowHeldByAnotherDaemonRefused(t *testing.T) {
	a, src, ln := probeAgent(t, AgentConfig{Secret: testSecret})
	c1, r1, s1 := rawSession(t, ln, "prod-1", testSecret, forgedPool)
	registerRaw(t, c1, s1, wire.TypeRegister, flow(5))
	waitAgent(t, a, "registration", func(s AgentStats) bool { return s.Flows == 1 })
	other, err := ln.DialFrom(t.Context(), netip.MustParseAddr("198.18.1.9"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	rd := wire.NewHandshakeReader(other)
	s, err := handshake(other, rd, handshakeConfig{role: wire.RoleCopier, name: "prod-2", secret: testSecret,
		pools: forgedPool, deadline: time.Now().Add(5 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	registerRaw(t, other, s.seal, wire.TypeRegister, flow(5))
	waitAgent(t, a, "conflict", func(s AgentStats) bool { return s.FlowsConflict == 1 && s.Flows == 1 })
	mine := reply(t, 5, rewrite.FlagACK, 0)
	src.Push(mine, time.Now())
	_ = c1.SetReadDeadline(time.Now().Add(5 * time.Second))
	if typ, _, err := r1.Next(); err != nil || typ != wire.TypeReplies {
		t.Fatalf("the first daemon's reply: %v %v", typ, err)
	}
	// prod-1 again, from its address, on a new connection: it takes the
	// flow back.
	c3, r3, s3 := rawSession(t, ln, "prod-1", testSecret, forgedPool)
	registerRaw(t, c3, s3, wire.TypeRegister, flow(5))
	waitAgent(t, a, "the flow moved", func(st AgentStats) bool { return st.Flows == 1 && st.FlowsConflict == 1 && st.Peers == 3 })
	// The registration was read before the reply: a ping answered proves it.
	if _, err := c3.Write(sealed(s3, wire.AppendPing(nil, 1))); err != nil {
		t.Fatal(err)
	}
	_ = c3.SetReadDeadline(time.Now().Add(5 * time.Second))
	if typ, _, err := r3.Next(); err != nil || typ != wire.TypePong {
		t.Fatalf("pong: %v %v", typ, err)
	}
	src.Push(mine, time.Now())
	if typ, _, err := r3.Next(); err != nil || typ != wire.TypeReplies {
		t.Fatalf("the reconnected daemon's reply: %v %v", typ, err)
	}
}

// TestPeerFlowQuota: one copy daemon cannot fill the table.
func TestPeerFlowQuota(t *testing.T) {
	a, _, ln := probeAgent(t, AgentConfig{Secret: testSecret, MaxPeerFlows: 3})
	c, _, seal := rawSession(t, ln, "prod", testSecret, forgedPool)
	registerRaw(t, c, seal, wire.TypeRegister, flow(1), flow(2), flow(3), flow(4), flow(5))
	waitAgent(t, a, "quota", func(s AgentStats) bool { return s.Flows == 3 && s.FlowsRejected == 2 })
	c2, _, seal2 := rawSession(t, ln, "prod-2", testSecret, forgedPool)
	registerRaw(t, c2, seal2, wire.TypeRegister, flow(6))
	waitAgent(t, a, "another daemon's own quota", func(s AgentStats) bool { return s.Flows == 4 })
}

// TestPeerFlowRate: a copy daemon over its rate is read more slowly, and
// nothing it sent is lost.
func TestPeerFlowRate(t *testing.T) {
	a, _, ln := probeAgent(t, AgentConfig{Secret: testSecret, PeerFlowRate: 200, PeerFlowBurst: 10})
	c, _, seal := rawSession(t, ln, "prod", testSecret, forgedPool)
	for i := range uint16(6) {
		registerRaw(t, c, seal, wire.TypeRegister, flow(10*i), flow(10*i+1), flow(10*i+2), flow(10*i+3), flow(10*i+4))
	}
	waitAgent(t, a, "every flow, throttled", func(s AgentStats) bool { return s.Flows == 30 && s.PeerThrottled > 0 })
}

// TestIdleFlowsExpire: a flow with neither reply nor registration for
// twice the idle time its daemon announced is dropped, so that a lost
// deregistration does not leak it for good.
func TestIdleFlowsExpire(t *testing.T) {
	a, _, ln := probeAgent(t, AgentConfig{Secret: testSecret})
	c, err := ln.Dial(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rd := wire.NewHandshakeReader(c)
	s, err := handshake(c, rd, handshakeConfig{role: wire.RoleCopier, name: "prod", secret: testSecret, pools: forgedPool,
		flowIdle: 20 * time.Millisecond, deadline: time.Now().Add(5 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	registerRaw(t, c, s.seal, wire.TypeRegister, flow(1), flow(2))
	waitAgent(t, a, "expiry", func(s AgentStats) bool { return s.FlowsExpired == 2 && s.Flows == 0 })
}

// TestInjectedFramesDropped: on plain TCP a frame not sealed with the
// session's key (an on-path attacker's registration) is skipped and
// counted; the session goes on.
func TestInjectedFramesDropped(t *testing.T) {
	a, _, ln := probeAgent(t, AgentConfig{Secret: testSecret})
	c, _, seal := rawSession(t, ln, "prod", testSecret, forgedPool)
	registerRaw(t, c, nil, wire.TypeRegister, flow(1)) // unsealed
	genuine := seal.Seal(wire.AppendFlows(nil, wire.TypeRegister, []rewrite.Tuple{flow(4)}))
	for range 2 { // the second time, a replay
		if _, err := c.Write(genuine); err != nil {
			t.Fatal(err)
		}
	}
	// Sealed by another session: same secret, other transcript.
	_, _, other := rawSession(t, ln, "prod-2", testSecret, forgedPool)
	registerRaw(t, c, other, wire.TypeRegister, flow(3))
	registerRaw(t, c, seal, wire.TypeRegister, flow(5))
	waitAgent(t, a, "3 frames dropped, the genuine ones taken", func(s AgentStats) bool {
		return s.BadFrames == 3 && s.Flows == 2 && s.Peers == 2 && s.PeerErrors == 0
	})
}

// TestLocalFlowsRefused: even a daemon that announces the whole address
// space cannot register a flow whose forged end is the agent's host: the
// host's own connections (SSH, the control channel) stay out of reach.
func TestLocalFlowsRefused(t *testing.T) {
	assist := netip.MustParseAddr("198.18.1.3")
	a, _, ln := probeAgent(t, AgentConfig{Secret: testSecret, LocalAddrs: func() []netip.Addr { return []netip.Addr{assist} }})
	c, _, seal := rawSession(t, ln, "prod", testSecret, testPools)
	ssh := rewrite.TupleOf(netip.AddrPortFrom(assist, 22), netip.MustParseAddrPort("198.18.1.2:51000"))
	control := rewrite.TupleOf(netip.AddrPortFrom(assist, wire.DefaultPort), netip.MustParseAddrPort("198.18.1.1:40000"))
	registerRaw(t, c, seal, wire.TypeRegister, ssh, control, flow(1))
	waitAgent(t, a, "two refused, one registered", func(s AgentStats) bool { return s.FlowsLocal == 2 && s.Flows == 1 })
}
