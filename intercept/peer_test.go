package intercept

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

func TestGarbageAndVersionMismatchRefusedWithoutHarm(t *testing.T) {
	r := newRig(t, AgentConfig{}, ClientConfig{})
	r.connected()
	r.register(flow(6))

	c, rd := rawPeer(t, r)
	go c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	expectPeerError(t, rd, wire.CodeProtocol)

	c2, rd2 := rawPeer(t, r)
	h := wire.Hello{Version: wire.Version + 1, Role: wire.RoleCopier, Name: "future"}
	go c2.Write(wire.AppendHello(nil, &h))
	expectPeerError(t, rd2, wire.CodeVersion)

	r.waitFor("refusals counted", func() bool { return r.agent.Stats().PeersRefused >= 2 })
	mine := reply(t, 6, rewrite.FlagACK, 0)
	r.src.Push(mine, time.Now())
	r.expectReply(mine) // the good daemon is unaffected
}

func TestPeerSendingGarbageAfterHandshakeIsDropped(t *testing.T) {
	for _, secret := range [][]byte{nil, testSecret} {
		r := newRig(t, AgentConfig{Secret: secret, InsecureNoAuth: secret == nil}, ClientConfig{})
		c, rd, seal := rawSession(t, r.ln, "bad", secret, testPools)
		go c.Write(sealed(seal, []byte{0, 0, 0, 3, byte(wire.TypeRegister), 0, 1})) // count 1, no flow
		expectPeerError(t, rd, wire.CodeProtocol)
		r.waitFor("peer error counted", func() bool { return r.agent.Stats().PeerErrors == 1 })
	}
}

func TestAllowlist(t *testing.T) {
	r := newRig(t, AgentConfig{Allow: []netip.Prefix{netip.MustParsePrefix("198.18.9.0/24")}}, ClientConfig{})
	r.waitFor("refusal", func() bool { return r.agent.Stats().PeersRefused >= 1 })
	if r.client.Connected() {
		t.Fatal("peer outside the allowlist accepted")
	}
	c, rd := rawPeer(t, r)
	_ = c
	expectPeerError(t, rd, wire.CodeNotAllowed)
}

// TestDeadPeersBatchesRecycledEmpty: the batches still queued for a daemon
// that went away go back to the pool empty. A full one would carry that
// daemon's headers into the next batch the relay takes from the pool, for
// whichever daemon it is.
func TestDeadPeersBatchesRecycledEmpty(t *testing.T) {
	hdr := reply(t, 1, rewrite.FlagACK, 0) // no payload: all header
	for range 20 {
		conn, other := net.Pipe()
		other.Close()
		p := &agentPeer{conn: conn, out: make(chan outFrame, 4), done: make(chan struct{})}
		var queued []*wire.ReplyBatch
		for range cap(p.out) {
			b := new(wire.ReplyBatch)
			b.Reset()
			if !b.Add(1, hdr) {
				t.Fatal("cannot build a batch")
			}
			queued = append(queued, b)
			p.out <- outFrame{batch: b}
		}
		p.close()
		new(Agent).writePeer(p) // returns once the queue is drained
		for i, b := range queued {
			if b.Len() != 0 {
				t.Fatalf("batch %d went back to the pool holding %d headers", i, b.Len())
			}
		}
	}
}
