package intercept

import (
	"net/netip"
	"strconv"
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
// daemon's writer, cut at the daemon's reply prefix and sealed, allocates
// nothing once warm, whatever the prefix.
func TestRelayPathZeroAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	for _, prefix := range []int{0, DefaultReplyPrefix, wire.MaxReplyPrefix} {
		t.Run(strconv.Itoa(prefix), func(t *testing.T) {
			a := NewAgent(AgentConfig{Secret: testSecret}, nil, nil, nil)
			r := &relay{a: a, owners: make(map[rewrite.Tuple]*flowEntry), peers: make(map[*agentPeer]struct{}), epoch: time.Now()}
			seal, _, err := wire.SessionKeys(testSecret, wire.Transcript(nil, nil, nil), wire.RoleAgent)
			if err != nil {
				t.Fatal(err)
			}
			p := &agentPeer{out: make(chan outFrame, 4), flows: make(map[rewrite.Tuple]*flowEntry), lease: time.Hour, seal: seal,
				pools: testPools, prefix: prefix}
			r.peers[p] = struct{}{}
			r.register(p, []rewrite.Tuple{flow(1)}, time.Now())
			pkt := reply(t, 1, rewrite.FlagACK, 1000)
			now := time.Now()
			want := rewrite.IPv4MinHeaderLen + rewrite.TCPMinHeaderLen + prefix
			step := func() {
				var h capturedHdr
				if !relayHeader(pkt, &h) {
					t.Fatal("not relayed")
				}
				r.onHeader(&h, now)
				r.flushDue(now, true)
				f := <-p.out
				if n := f.batch.Size() - 5 - 2 - 10; n != want {
					t.Fatalf("relayed %d bytes, want %d", n, want)
				}
				_ = p.seal.Seal(f.batch.Frame())
				recycle(f.batch)
			}
			for range 10 {
				step()
			}
			if n := testing.AllocsPerRun(1000, step); n != 0 {
				t.Fatalf("%v allocations per relayed reply", n)
			}
		})
	}
}

// TestPeerBatchBoundedInBytes: replies with the largest prefix leave in
// batches of about maxBatchBytes, not of a full frame: a daemon's write
// queue stays PeerQueue batches of that size at most.
func TestPeerBatchBoundedInBytes(t *testing.T) {
	a := NewAgent(AgentConfig{Secret: testSecret}, nil, nil, nil)
	r := &relay{a: a, owners: make(map[rewrite.Tuple]*flowEntry), peers: make(map[*agentPeer]struct{}), epoch: time.Now()}
	p := &agentPeer{out: make(chan outFrame, 64), flows: make(map[rewrite.Tuple]*flowEntry), prefix: wire.MaxReplyPrefix}
	r.peers[p] = struct{}{}
	pkt := reply(t, 1, rewrite.FlagACK, 1400)
	var h capturedHdr
	if !relayHeader(pkt, &h) {
		t.Fatal("not relayed")
	}
	now := time.Now()
	const n = 2000
	for range n {
		r.deliver(p, &h, now)
	}
	r.flushDue(now, true)
	total := 0
	for len(p.out) > 0 {
		f := <-p.out
		if f.batch.Size() > maxBatchBytes+10+wire.MaxReplyLen {
			t.Fatalf("a batch of %d bytes, bound %d", f.batch.Size(), maxBatchBytes)
		}
		total += f.batch.Len()
		recycle(f.batch)
	}
	if total != n || a.Stats().Relayed != n || a.Stats().DroppedPeer != 0 {
		t.Fatalf("%d replies queued, stats %+v; want %d", total, a.Stats(), n)
	}
}
