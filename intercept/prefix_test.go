package intercept

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// The reply prefix: each copy daemon asks, in its hello, for the first
// bytes of each reply's payload, and is sent its own cut.

// payloadOf returns n deterministic payload bytes, different per seed.
func payloadOf(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i)*13
	}
	return b
}

// replyWith builds a shadow reply to the forged endpoint with port p
// carrying payload.
func replyWith(t testing.TB, p uint16, payload []byte) []byte {
	t.Helper()
	seg := rewrite.Segment{
		Src: shadow, Dst: netip.AddrPortFrom(forged.Addr(), p), Seq: 7, Ack: 9,
		Flags: rewrite.FlagACK | rewrite.FlagPSH, Window: 1000, Payload: payload,
	}
	b := make([]byte, seg.Len())
	if _, err := seg.Put(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// checkCut checks that got is pkt as a peer asking for prefix bytes is
// sent it: pkt's headers, then the first min(payload, prefix) bytes of
// its payload, decoding with the whole payload's length.
func checkCut(t testing.TB, got, pkt []byte, prefix int) {
	t.Helper()
	var want rewrite.Packet
	if err := want.Decode(pkt); err != nil {
		t.Fatal(err)
	}
	keep := min(len(want.Payload()), prefix)
	if !bytes.Equal(got, pkt[:len(want.Headers())+keep]) {
		t.Fatalf("prefix %d, payload %d: relayed %d bytes, want headers (%d) and %d payload bytes\n got %x",
			prefix, len(want.Payload()), len(got), len(want.Headers()), keep, got)
	}
	var p rewrite.Packet
	if err := p.DecodeHeader(got); err != nil {
		t.Fatalf("prefix %d: relayed reply does not decode: %v", prefix, err)
	}
	if p.PayloadLen() != want.PayloadLen() || !bytes.Equal(p.Payload(), want.Payload()[:keep]) {
		t.Fatalf("prefix %d: payload length %d with %d bytes present, want %d with %d",
			prefix, p.PayloadLen(), len(p.Payload()), want.PayloadLen(), keep)
	}
}

// TestRelayCutsEachPeersPrefix: one captured reply, delivered to peers
// asking for different prefixes, reaches each with its own cut, and
// cutting for one does not change what the next is sent.
func TestRelayCutsEachPeersPrefix(t *testing.T) {
	a := NewAgent(AgentConfig{Secret: testSecret}, nil, nil, nil)
	r := &relay{a: a, owners: make(map[rewrite.Tuple]*flowEntry), peers: make(map[*agentPeer]struct{}), epoch: time.Now()}
	prefixes := []int{0, 1, 64, wire.MaxReplyPrefix}
	var peers []*agentPeer
	for _, prefix := range prefixes {
		p := &agentPeer{out: make(chan outFrame, 4), flows: make(map[rewrite.Tuple]*flowEntry), prefix: prefix}
		r.peers[p] = struct{}{}
		peers = append(peers, p)
	}
	for _, plen := range []int{0, 1, 30, 64, 65, 256, 1000} {
		pkt := replyWith(t, 1, payloadOf(plen, byte(plen)))
		var h capturedHdr
		if !relayHeader(pkt, &h) {
			t.Fatal("not relayed")
		}
		now := time.Now()
		for _, p := range peers {
			r.deliver(p, &h, now)
		}
		r.flushDue(now, true)
		for i, p := range peers {
			f := <-p.out
			var got [][]byte
			if _, err := wire.ForEachReply(f.batch.Frame()[5:], func(_ int64, rep []byte) { got = append(got, bytes.Clone(rep)) }); err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 {
				t.Fatalf("peer %d: %d replies", i, len(got))
			}
			checkCut(t, got[0], pkt, prefixes[i])
			recycle(f.batch)
		}
	}
}

// TestClientsGetTheirPrefixes: two copy daemons with different prefixes,
// each owning flows, are each sent their replies cut at their own prefix,
// through the real handshake, relay and client.
func TestClientsGetTheirPrefixes(t *testing.T) {
	r := newRig(t, AgentConfig{}, ClientConfig{ReplyPrefix: DefaultReplyPrefix})
	r.connected()
	other := make(chan []byte, 64)
	c2 := NewClient(ClientConfig{Addr: "agent", Name: "prod-2", Secret: testSecret, Pools: testPools, ReplyPrefix: wire.MaxReplyPrefix,
		Dial: r.ln.Dial, RetryMin: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond},
		func(rep []byte) { other <- bytes.Clone(rep) }, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c2.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	r.waitFor("both daemons connected", func() bool { return c2.Connected() && r.agent.Stats().Peers == 2 })
	r.register(flow(1))
	c2.Register(flow(2))
	r.waitFor("both registrations", func() bool { return r.agent.Stats().Flows == 2 })
	for _, plen := range []int{0, 10, 64, 100, 256, 300, 1400} {
		payload := payloadOf(plen, 3)
		mine, theirs := replyWith(t, 1, payload), replyWith(t, 2, payload)
		r.src.Push(mine, time.Now())
		r.src.Push(theirs, time.Now())
		select {
		case got := <-r.replies:
			checkCut(t, got, mine, DefaultReplyPrefix)
		case <-time.After(5 * time.Second):
			t.Fatalf("payload %d: nothing relayed to the first daemon; agent %+v", plen, r.agent.Stats())
		}
		select {
		case got := <-other:
			checkCut(t, got, theirs, wire.MaxReplyPrefix)
		case <-time.After(5 * time.Second):
			t.Fatalf("payload %d: nothing relayed to the second daemon; agent %+v", plen, r.agent.Stats())
		}
	}
	if st := r.agent.Stats(); st.Bad != 0 || st.Relayed != 14 {
		t.Fatalf("agent stats %+v, want 14 relayed and none bad", st)
	}
}

// TestIPv6PrefixAfterExtensionHeaders: an IPv6 reply's extension headers
// are dropped and its payload prefix follows the TCP header directly.
func TestIPv6PrefixAfterExtensionHeaders(t *testing.T) {
	r := newRig(t, AgentConfig{}, ClientConfig{ReplyPrefix: 16})
	r.connected()
	sh := netip.MustParseAddrPort("[2001:2:0:1::2]:80")
	fg := netip.MustParseAddrPort("[2001:2:0:ff::9]:5000")
	r.register(rewrite.TupleOf(fg, sh))
	seg := rewrite.Segment{Src: sh, Dst: fg, Seq: 1, Ack: 2, Flags: rewrite.FlagACK, Window: 10, Payload: payloadOf(30, 1)}
	plain := make([]byte, seg.Len())
	if _, err := seg.Put(plain); err != nil {
		t.Fatal(err)
	}
	withExt := append(append([]byte(nil), plain[:40]...), rewrite.ProtoTCP, 0, 1, 4, 0, 0, 0, 0)
	withExt = append(withExt, plain[40:]...)
	withExt[6] = 0 // next header: hop-by-hop
	rewrite.IPv6(withExt).SetPayloadLen(len(withExt) - 40)
	r.src.Push(withExt, time.Now())
	select {
	case got := <-r.replies:
		checkCut(t, got, plain, 16)
	case <-time.After(5 * time.Second):
		t.Fatalf("nothing relayed; agent %+v", r.agent.Stats())
	}
}

// TestRelayHeaderKeepsWhatWasCaptured: a reply the capture cut short (its
// snap length) relays the payload bytes it has, and the IP header still
// announces the whole payload.
func TestRelayHeaderKeepsWhatWasCaptured(t *testing.T) {
	full := replyWith(t, 1, payloadOf(1000, 5))
	const hl = rewrite.IPv4MinHeaderLen + rewrite.TCPMinHeaderLen
	for _, captured := range []int{hl, hl + 1, 100, hl + wire.MaxReplyPrefix, hl + wire.MaxReplyPrefix + 1, len(full)} {
		var h capturedHdr
		if !relayHeader(full[:captured], &h) {
			t.Fatalf("%d bytes captured: not relayed", captured)
		}
		if int(h.hl) != hl || int(h.n) != min(captured, hl+wire.MaxReplyPrefix) {
			t.Fatalf("%d bytes captured: headers %d, kept %d", captured, h.hl, h.n)
		}
		for _, prefix := range []int{0, 1, 64, wire.MaxReplyPrefix} {
			var p rewrite.Packet
			got := h.cut(prefix)
			if err := p.DecodeHeader(got); err != nil || p.PayloadLen() != 1000 ||
				!bytes.Equal(p.Payload(), full[hl:hl+min(prefix, captured-hl)]) {
				t.Fatalf("%d bytes captured, prefix %d: %v, payload length %d, %d bytes present",
					captured, prefix, err, p.PayloadLen(), len(p.Payload()))
			}
		}
	}
}

// TestReplyPrefixAboveMaxRefused: the agent refuses a hello asking for
// more than wire.MaxReplyPrefix, saying why, and serves the others; a
// client configured so reports it without dialing.
func TestReplyPrefixAboveMaxRefused(t *testing.T) {
	r := newRig(t, AgentConfig{}, ClientConfig{})
	r.connected()
	for _, asked := range []uint16{wire.MaxReplyPrefix + 1, 0xffff} {
		c, rd := rawPeer(t, r)
		h := wire.Hello{Version: wire.Version, Role: wire.RoleCopier, Caps: wire.CapAuth, Name: "greedy", ReplyPrefix: asked, Pools: testPools}
		go c.Write(wire.AppendHello(nil, &h))
		pe := nextPeerError(t, rd)
		if pe.Code != wire.CodeNotAllowed || !strings.Contains(pe.Msg, "reply prefix of "+strconv.Itoa(int(asked))+" bytes") ||
			!strings.Contains(pe.Msg, "at most 256 bytes") {
			t.Fatalf("asked %d: refusal %v", asked, pe)
		}
	}
	r.waitFor("refusals counted", func() bool { return r.agent.Stats().PeersRefused == 2 })
	// The largest prefix allowed is taken.
	c, rd := rawPeer(t, r)
	h := wire.Hello{Version: wire.Version, Role: wire.RoleCopier, Name: "max", ReplyPrefix: wire.MaxReplyPrefix, Pools: testPools}
	go c.Write(wire.AppendHello(nil, &h))
	if typ, _, err := rd.Next(); err != nil || typ != wire.TypeHello {
		t.Fatalf("prefix %d: %v %v, want the agent's hello", wire.MaxReplyPrefix, typ, err)
	}

	for _, bad := range []int{-1, wire.MaxReplyPrefix + 1} {
		cl := NewClient(ClientConfig{Addr: "agent", Secret: testSecret, ReplyPrefix: bad,
			Dial: func(context.Context, string) (net.Conn, error) {
				t.Error("dialed with a bad reply prefix")
				return nil, errors.New("no")
			}}, func([]byte) {}, slog.New(slog.DiscardHandler))
		_, err := cl.dial(context.Background())
		if !errors.Is(err, ErrReplyPrefix) || !strings.Contains(err.Error(), strconv.Itoa(bad)+" bytes, want 0..256") {
			t.Fatalf("reply prefix %d: %v", bad, err)
		}
	}
}

// nextPeerError reads rd up to an Error frame and returns it.
func nextPeerError(t testing.TB, rd *wire.Reader) *wire.PeerError {
	t.Helper()
	for {
		typ, p, err := rd.Next()
		if err != nil {
			t.Fatalf("no error frame before the connection ended: %v", err)
		}
		if typ != wire.TypeError {
			continue
		}
		pe, err := wire.ParseError(p)
		if err != nil {
			t.Fatal(err)
		}
		return pe
	}
}

// oldHello returns a Hello frame as version 2 or 3 wrote it: no HTTP/2
// ports after the pools, and in version 2 no reply prefix between the
// flow idle time and the pool count.
func oldHello(t testing.TB, version uint16, h wire.Hello) []byte {
	t.Helper()
	h.Version, h.H2Ports = version, nil
	f := wire.AppendHello(nil, &h)
	f = f[:len(f)-1] // the empty list of HTTP/2 ports
	f[3]--           // the length prefix (a hello is short)
	if version == 2 {
		off := 5 + 44 + len(h.Name) + 4 // frame header, fixed part, name, flow idle ms
		f = append(f[:off:off], f[off+2:]...)
		f[3] -= 2
	}
	return f
}

// TestOlderPeersRefusedOnBothSides: a version 2 or 3 copy daemon is told
// by the agent, and a version 2 or 3 agent by the client, that the
// versions differ, naming both.
func TestOlderPeersRefusedOnBothSides(t *testing.T) {
	for _, v := range []uint16{2, 3} {
		t.Run(fmt.Sprint(v), func(t *testing.T) { testOlderPeerRefused(t, v) })
	}
}

func testOlderPeerRefused(t *testing.T, version uint16) {
	want := fmt.Sprintf("version mismatch: this side speaks version %d, the peer version %d", wire.Version, version)
	r := newRig(t, AgentConfig{}, ClientConfig{})
	r.connected()
	c, rd := rawPeer(t, r)
	go c.Write(oldHello(t, version, wire.Hello{Role: wire.RoleCopier, Caps: wire.CapAuth, Name: "old", FlowIdle: time.Minute, Pools: testPools}))
	if pe := nextPeerError(t, rd); pe.Code != wire.CodeVersion || pe.Msg != want {
		t.Fatalf("agent's refusal of a version 2 daemon: %v", pe)
	}

	// A version 2 agent: it sends its hello and reads ours, then our refusal.
	mine, theirs, err := socketPair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mine.Close(); theirs.Close() })
	heard := make(chan *wire.PeerError, 1)
	go func() {
		_, _ = theirs.Write(oldHello(t, version, wire.Hello{Role: wire.RoleAgent, Caps: wire.CapAuth}))
		rd := wire.NewHandshakeReader(theirs)
		if typ, _, err := rd.Next(); err != nil || typ != wire.TypeHello {
			heard <- nil
			return
		}
		typ, p, err := rd.Next()
		if err != nil || typ != wire.TypeError {
			heard <- nil
			return
		}
		pe, _ := wire.ParseError(p)
		heard <- pe
	}()
	cl := NewClient(ClientConfig{Addr: "old-agent", Secret: testSecret, ReplyPrefix: 64,
		Dial: func(context.Context, string) (net.Conn, error) { return mine, nil }}, func([]byte) {}, slog.New(slog.DiscardHandler))
	_, err = cl.dial(context.Background())
	var pe *wire.PeerError
	if !errors.As(err, &pe) || pe.Code != wire.CodeVersion || !strings.Contains(err.Error(), want) {
		t.Fatalf("client's error with a version 2 agent: %v", err)
	}
	select {
	case pe := <-heard:
		if pe == nil || pe.Code != wire.CodeVersion || pe.Msg != want {
			t.Fatalf("what the version 2 agent was told: %v", pe)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the version 2 agent heard nothing")
	}
}
