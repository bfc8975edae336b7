package intercept

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// scriptConn is a net.Conn whose peer's bytes are a script: Read returns
// them, then waits for the read deadline; writes are discarded.
type scriptConn struct {
	mu       sync.Mutex
	data     []byte
	eof      bool // after the script, io.EOF rather than a wait
	deadline time.Time
	closed   chan struct{}
	once     sync.Once
}

func newScriptConn(data []byte) *scriptConn {
	return &scriptConn{data: data, closed: make(chan struct{})}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }
func (timeoutErr) Unwrap() error   { return os.ErrDeadlineExceeded }

func (c *scriptConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if len(c.data) > 0 {
		n := copy(p, c.data)
		c.data = c.data[n:]
		c.mu.Unlock()
		return n, nil
	}
	d, eof := c.deadline, c.eof
	c.mu.Unlock()
	if eof {
		return 0, io.EOF
	}
	if d.IsZero() {
		<-c.closed
		return 0, net.ErrClosed
	}
	t := time.NewTimer(time.Until(d))
	defer t.Stop()
	select {
	case <-t.C:
		return 0, timeoutErr{}
	case <-c.closed:
		return 0, net.ErrClosed
	}
}

func (c *scriptConn) Write(p []byte) (int, error) {
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	default:
		return len(p), nil
	}
}

func (c *scriptConn) Close() error                      { c.once.Do(func() { close(c.closed) }); return nil }
func (c *scriptConn) LocalAddr() net.Addr               { return &net.TCPAddr{} }
func (c *scriptConn) RemoteAddr() net.Addr              { return &net.TCPAddr{} }
func (c *scriptConn) SetReadDeadline(t time.Time) error { return c.SetDeadline(t) }
func (c *scriptConn) SetWriteDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return nil
}

// FuzzHandshake feeds a peer's bytes to either side's handshake, with and
// without a secret, the peer then hanging up or going silent: with a
// secret it never succeeds (the peer cannot know the transcript's fresh
// nonce), it always returns by its deadline, and a handshake holds little
// memory whatever the bytes announce.
func FuzzHandshake(f *testing.F) {
	copierHello := wire.AppendHello(nil, &wire.Hello{Version: wire.Version, Role: wire.RoleCopier, Name: "prod", Pools: testPools})
	agentHello := wire.AppendHello(nil, &wire.Hello{Version: wire.Version, Role: wire.RoleAgent, Caps: wire.CapAuth})
	plainAgent := wire.AppendHello(nil, &wire.Hello{Version: wire.Version, Role: wire.RoleAgent})
	for _, seed := range [][]byte{
		nil, copierHello, agentHello, plainAgent,
		append(bytes.Clone(agentHello), wire.AppendAuth(nil, [32]byte{1}, "assist")...),
		append(bytes.Clone(copierHello), wire.AppendAuth(nil, [32]byte{2}, "")...),
		wire.AppendHello(nil, &wire.Hello{Version: 1, Role: wire.RoleCopier}),
		oldHello(f, 2, wire.Hello{Role: wire.RoleCopier, Caps: wire.CapAuth, Name: "old", Pools: testPools}),
		oldHello(f, 3, wire.Hello{Role: wire.RoleCopier, Name: "v3"}),
		oldHello(f, 2, wire.Hello{Role: wire.RoleAgent}),
		wire.AppendHello(nil, &wire.Hello{Version: wire.Version, Role: wire.RoleCopier, ReplyPrefix: wire.MaxReplyPrefix + 1, Pools: testPools}),
		wire.AppendError(nil, wire.CodeAuth, "no"),
		append([]byte{0x00, 0x10, 0x00, 0x00, byte(wire.TypeHello)}, make([]byte, 64<<10)...), // a megabyte announced
		[]byte("GET / HTTP/1.1\r\n\r\n"),
	} {
		for _, role := range []byte{1, 2} {
			f.Add(role, true, false, seed)
			f.Add(role, false, false, seed)
		}
		f.Add(byte(2), true, true, seed)
	}
	f.Fuzz(func(t *testing.T, role byte, withSecret, silent bool, data []byte) {
		c := handshakeConfig{role: wire.RoleCopier, name: "me", pools: testPools, replyPrefix: DefaultReplyPrefix,
			deadline: time.Now().Add(100 * time.Millisecond)}
		if role%2 == 0 {
			c.role = wire.RoleAgent
		}
		if withSecret {
			c.secret = testSecret
		}
		conn := newScriptConn(data)
		conn.eof = !silent
		defer conn.Close()
		var err error
		done := make(chan struct{})
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		go func() {
			defer close(done)
			_, err = handshake(conn, wire.NewHandshakeReader(conn), c)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("handshake did not return by its deadline")
		}
		runtime.ReadMemStats(&after)
		if withSecret && err == nil {
			t.Fatal("handshake with a secret succeeded against scripted bytes")
		}
		if n := after.TotalAlloc - before.TotalAlloc; n > 256<<10 {
			t.Fatalf("handshake allocated %d bytes", n)
		}
	})
}

// frameScript turns fuzz data into frames for a session: each record is
// kind u8 | len u8 | len bytes; an even kind is sealed as a frame of type
// bytes[0] (the rest its payload), an odd one written as raw bytes.
func frameScript(data []byte, seal *wire.Sealer) []byte {
	var out []byte
	for len(data) >= 2 {
		kind, n := data[0], int(data[1])
		data = data[2:]
		n = min(n, len(data))
		rec := data[:n]
		data = data[n:]
		if kind%2 == 1 || len(rec) == 0 {
			out = append(out, rec...)
			continue
		}
		frame := append(be32(uint32(len(rec))), rec...)
		out = append(out, sealed(seal, frame)...)
	}
	return out
}

// flowRecord is a frameScript record registering f.
func flowRecord(typ wire.MsgType, f rewrite.Tuple) []byte {
	fr := wire.AppendFlows(nil, typ, []rewrite.Tuple{f})
	return append([]byte{0, byte(len(fr) - 4)}, fr[4:]...)
}

// FuzzAgentPeer feeds frames to the agent from an authenticated copy
// daemon: the agent never breaks, and once the daemon is gone it holds
// none of its flows and none of its slots.
func FuzzAgentPeer(f *testing.F) {
	f.Add(flowRecord(wire.TypeRegister, flow(1)))
	f.Add(append(flowRecord(wire.TypeRegister, flow(1)), flowRecord(wire.TypeDeregister, flow(1))...))
	f.Add(append(flowRecord(wire.TypeRegister, flow(2)), 1, 5, 0, 0, 0, 9, 7))
	f.Add([]byte{0, 9, byte(wire.TypePing), 1, 2, 3, 4, 5, 6, 7, 8})
	f.Add([]byte{0, 3, byte(wire.TypeError), 0, 1})
	f.Add([]byte{0, 1, 200})
	f.Add([]byte{1, 4, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		a, _, ln := probeAgent(t, AgentConfig{Secret: testSecret})
		c, _, seal := rawSession(t, ln, "fuzz", testSecret, forgedPool)
		waitAgent(t, a, "the daemon", func(s AgentStats) bool { return s.Peers == 1 })
		go io.Copy(io.Discard, c)
		_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_, _ = c.Write(frameScript(data, seal))
		// A ping answered: everything before it was read (unless the
		// agent closed the connection on a protocol error first).
		_, _ = c.Write(sealed(seal, wire.AppendPing(nil, 1)))
		c.Close()
		slots := func() int {
			a.conns.mu.Lock()
			defer a.conns.mu.Unlock()
			return a.conns.handshakes + a.conns.peers + len(a.conns.perAddr)
		}
		waitAgent(t, a, "the daemon gone, its flows and slots with it", func(s AgentStats) bool {
			return s.Peers == 0 && s.Flows == 0 && slots() == 0
		})
	})
}

// FuzzClientStream feeds frames to the copy daemon's reader, sealed or
// not: it never breaks, hands onReply only replies of a valid length, and
// returns when the stream ends.
func FuzzClientStream(f *testing.F) {
	var b wire.ReplyBatch
	b.Reset()
	b.Add(1, make([]byte, wire.MinReplyHeader))
	b.Add(2, make([]byte, wire.MaxReplyLen)) // headers and the largest prefix
	rep := b.Frame()
	f.Add(false, append([]byte{0, byte(len(rep) - 4)}, rep[4:]...))
	f.Add(true, append([]byte{0, byte(len(rep) - 4)}, rep[4:]...))
	f.Add(true, append([]byte{1, byte(len(rep))}, rep...)) // unsealed in a sealed session
	f.Add(false, []byte{0, 9, byte(wire.TypePong), 0, 0, 0, 0, 0, 0, 0, 1})
	f.Add(false, []byte{0, 3, byte(wire.TypeError), 0, 4})
	f.Add(true, []byte{0, 1, 99})
	f.Fuzz(func(t *testing.T, seal bool, data []byte) {
		var s *wire.Sealer
		var o *wire.Opener
		if seal {
			tr := wire.Transcript([]byte("c"), []byte("a"), nil)
			s, _, _ = wire.SessionKeys(testSecret, tr, wire.RoleAgent)
			_, o, _ = wire.SessionKeys(testSecret, tr, wire.RoleCopier)
		}
		stream := frameScript(data, s)
		var bad bool
		c := NewClient(ClientConfig{Addr: "agent"}, func(hdr []byte) {
			if len(hdr) < wire.MinReplyHeader || len(hdr) > wire.MaxReplyLen {
				bad = true
			}
		}, slog.New(slog.DiscardHandler))
		r := wire.NewReader(bytes.NewReader(stream))
		if o != nil {
			r.SetOpener(o)
		}
		lost := make(chan *clientConn, 1)
		done := make(chan struct{})
		go func() { defer close(done); c.readLoop(&clientConn{r: r}, lost) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("readLoop did not return at the end of the stream")
		}
		if bad {
			t.Fatal("onReply got a reply of an invalid length")
		}
		if st := c.Stats(); st.Replies < st.ReplyFrames {
			t.Fatalf("%d replies in %d frames", st.Replies, st.ReplyFrames)
		}
		if len(lost) != 1 {
			t.Fatal("readLoop ended without reporting its connection lost")
		}
	})
}

// FuzzRelayHeader: whatever is captured, relayHeader never reads or writes
// out of bounds, and what it accepts is a reply the copier decodes into
// the same flow, at every prefix: the headers, then the first bytes of the
// payload captured.
func FuzzRelayHeader(f *testing.F) {
	f.Add(reply(f, 1, rewrite.FlagACK, 100))
	f.Add(reply(f, 2, rewrite.FlagSYN|rewrite.FlagACK, 0))
	seg := rewrite.Segment{Src: netip.MustParseAddrPort("[2001:2:0:1::2]:80"), Dst: netip.MustParseAddrPort("[2001:2:0:ff::9]:5000"), Seq: 1, Flags: rewrite.FlagRST, Window: 1}
	b := make([]byte, seg.Len())
	if _, err := seg.Put(b); err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add(append(append(bytes.Clone(b[:40]), rewrite.ProtoTCP, 0, 1, 4, 0, 0, 0, 0), b[40:]...))
	seg.Payload = bytes.Repeat([]byte("HTTP/1.1 500 "), 30) // longer than any prefix
	b = make([]byte, seg.Len())
	if _, err := seg.Put(b); err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add(b[:len(b)-200]) // cut short by the snap length
	f.Add(reply(f, 3, rewrite.FlagACK, 5)[:45])
	f.Add([]byte{0x45})
	f.Fuzz(func(t *testing.T, pkt []byte) {
		var h capturedHdr
		if !relayHeader(pkt, &h) {
			return
		}
		if int(h.n) > len(h.hdr) || h.hl < wire.MinReplyHeader || int(h.hl) > wire.MaxReplyHeader || h.n < uint16(h.hl) {
			t.Fatalf("reply of %d bytes, %d of them headers", h.n, h.hl)
		}
		var orig rewrite.Packet
		if err := orig.DecodeHeader(pkt); err != nil {
			t.Fatalf("relayed a packet that does not decode: %v", err)
		}
		for _, prefix := range []int{0, 1, 64, wire.MaxReplyPrefix} {
			rep := h.cut(prefix)
			var p rewrite.Packet
			if err := p.DecodeHeader(rep); err != nil {
				t.Fatalf("prefix %d: relayed reply does not decode: %v (%x)", prefix, err, rep)
			}
			if p.Tuple() != h.key {
				t.Fatalf("prefix %d: relayed reply's flow %v, key %v", prefix, p.Tuple(), h.key)
			}
			if keep := min(len(orig.Payload()), prefix); !bytes.Equal(p.Payload(), orig.Payload()[:keep]) {
				t.Fatalf("prefix %d: payload %x, want %x", prefix, p.Payload(), orig.Payload()[:keep])
			}
		}
	})
}
