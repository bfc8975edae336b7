package intercept

import (
	"net/netip"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

func TestIPv6ExtensionHeadersStripped(t *testing.T) {
	r := newRig(t, AgentConfig{}, ClientConfig{})
	r.connected()
	sh := netip.MustParseAddrPort("[2001:2:0:1::2]:80")
	fg := netip.MustParseAddrPort("[2001:2:0:ff::9]:5000")
	r.register(rewrite.TupleOf(fg, sh))
	seg := rewrite.Segment{Src: sh, Dst: fg, Seq: 1, Ack: 2, Flags: rewrite.FlagACK, Window: 10, Payload: make([]byte, 30)}
	plain := make([]byte, seg.Len())
	if _, err := seg.Put(plain); err != nil {
		t.Fatal(err)
	}
	// Insert an 8-byte hop-by-hop header after the fixed header.
	withExt := append(append([]byte(nil), plain[:40]...), rewrite.ProtoTCP, 0, 1, 4, 0, 0, 0, 0)
	withExt = append(withExt, plain[40:]...)
	withExt[6] = 0 // next header: hop-by-hop
	rewrite.IPv6(withExt).SetPayloadLen(len(withExt) - 40)
	r.src.Push(withExt, time.Now())
	r.expectReply(plain)
}

func TestRelayHeaderZeroAlloc(t *testing.T) {
	pkt := reply(t, 1, rewrite.FlagACK, 100)
	var h capturedHdr
	if n := testing.AllocsPerRun(100, func() { relayHeader(pkt, &h) }); n != 0 {
		t.Fatalf("relayHeader allocates %v per packet", n)
	}
}

// TestDefaultAgentConfig: every default is in DefaultAgentConfig, and
// defaults() takes it for the zero fields only.
func TestDefaultAgentConfig(t *testing.T) {
	var zero AgentConfig
	zero.defaults()
	custom := AgentConfig{FlushDelay: time.Millisecond, MaxFlows: 7}
	custom.defaults()
	want := DefaultAgentConfig()
	want.FlushDelay, want.MaxFlows = time.Millisecond, 7
	checkDefaults(t, DefaultAgentConfig(), zero, custom, want)
}

// TestRelayPathZeroAlloc: a captured reply's way through the relay to its
// daemon's writer, sealing included, allocates nothing once warm.
func TestRelayPathZeroAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	a := NewAgent(AgentConfig{Secret: testSecret}, nil, nil, nil)
	r := &relay{a: a, owners: make(map[rewrite.Tuple]*flowEntry), peers: make(map[*agentPeer]struct{}), epoch: time.Now()}
	seal, _, err := wire.SessionKeys(testSecret, wire.Transcript(nil, nil, nil), wire.RoleAgent)
	if err != nil {
		t.Fatal(err)
	}
	p := &agentPeer{out: make(chan outFrame, 4), flows: make(map[rewrite.Tuple]*flowEntry), lease: time.Hour, seal: seal,
		pools: testPools}
	r.peers[p] = struct{}{}
	r.register(p, []rewrite.Tuple{flow(1)}, time.Now())
	pkt := reply(t, 1, rewrite.FlagACK, 100)
	now := time.Now()
	step := func() {
		var h capturedHdr
		if !relayHeader(pkt, &h) {
			t.Fatal("not relayed")
		}
		r.onHeader(&h, now)
		r.flushDue(now, true)
		f := <-p.out
		_ = p.seal.Seal(f.batch.Frame())
		recycle(f.batch)
	}
	for range 10 {
		step()
	}
	if n := testing.AllocsPerRun(1000, step); n != 0 {
		t.Fatalf("%v allocations per relayed reply", n)
	}
}
