package intercept

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcpshadow/tcpshadow/capture/capturetest"
	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// pipeListener is an in-memory net.Listener: the tests never touch a
// network. Dial hands the server side of a socket pair to Accept.
type pipeListener struct {
	conns  chan net.Conn
	once   sync.Once
	closed chan struct{}
	remote netip.Addr // what RemoteAddr reports for accepted conns
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), closed: make(chan struct{}), remote: netip.MustParseAddr("198.18.1.1")}
}

type addrConn struct {
	net.Conn
	remote net.Addr
}

func (c addrConn) RemoteAddr() net.Addr { return c.remote }

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(198, 18, 1, 3), Port: 36524} }

// socketPair returns two connected, kernel-buffered stream sockets (a
// Unix socket pair: in-memory, unlike net.Pipe it buffers writes).
func socketPair() (net.Conn, net.Conn, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			return nil, nil, err
		}
		conns[i] = c
	}
	return conns[0], conns[1], nil
}

func (l *pipeListener) Dial(ctx context.Context, _ string) (net.Conn, error) {
	client, server, err := socketPair()
	if err != nil {
		return nil, err
	}
	select {
	case l.conns <- addrConn{server, &net.TCPAddr{IP: l.remote.AsSlice(), Port: 40000}}:
		return client, nil
	case <-l.closed:
		return nil, errors.New("connection refused")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

var (
	shadow = netip.MustParseAddrPort("198.18.1.2:80")
	forged = netip.MustParseAddrPort("198.19.0.9:40000")
)

// flow is the registration of forged→shadow with port p.
func flow(p uint16) rewrite.Tuple {
	return rewrite.TupleOf(netip.AddrPortFrom(forged.Addr(), p), shadow)
}

// reply builds a shadow reply to the forged endpoint with port p.
func reply(t *testing.T, p uint16, flags uint8, plen int) []byte {
	t.Helper()
	seg := rewrite.Segment{
		Src: shadow, Dst: netip.AddrPortFrom(forged.Addr(), p), Seq: 7, Ack: 9,
		Flags: flags, Window: 1000, Payload: make([]byte, plen),
	}
	b := make([]byte, seg.Len())
	if _, err := seg.Put(b); err != nil {
		t.Fatal(err)
	}
	return b
}

type rig struct {
	t       *testing.T
	src     *capturetest.Source
	mu      sync.Mutex
	ln      *pipeListener // where the client dials; swapped to restart the agent
	agent   *Agent
	client  *Client
	replies chan []byte
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

func newRig(t *testing.T, acfg AgentConfig, ccfg ClientConfig) *rig {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	r := &rig{t: t, src: capturetest.New(64), ln: newPipeListener(), replies: make(chan []byte, 64)}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	r.agent = NewAgent(acfg, r.src, r.ln, log)
	ccfg.Addr = "agent"
	ccfg.Dial = func(ctx context.Context, addr string) (net.Conn, error) {
		r.mu.Lock()
		ln := r.ln
		r.mu.Unlock()
		return ln.Dial(ctx, addr)
	}
	ccfg.RetryMin = 10 * time.Millisecond
	ccfg.RetryMax = 50 * time.Millisecond
	r.client = NewClient(ccfg, func(hdr []byte) { r.replies <- append([]byte(nil), hdr...) }, log)
	r.wg.Add(2)
	go func() { defer r.wg.Done(); _ = r.agent.Run(ctx) }()
	go func() { defer r.wg.Done(); _ = r.client.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		r.wg.Wait()
	})
	return r
}

func (r *rig) waitFor(what string, cond func() bool) {
	r.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			r.t.Fatalf("timed out waiting for %s; agent %+v client %+v", what, r.agent.Stats(), r.client.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (r *rig) register(f rewrite.Tuple) {
	r.t.Helper()
	before := r.agent.Stats().Flows
	r.client.Register(f)
	r.waitFor("registration", func() bool { return r.agent.Stats().Flows > before })
}

func (r *rig) expectReply(want []byte) {
	r.t.Helper()
	select {
	case got := <-r.replies:
		var p rewrite.Packet
		if err := p.Decode(want); err != nil {
			r.t.Fatal(err)
		}
		if !bytes.Equal(got, p.Headers()) {
			r.t.Fatalf("relayed header differs:\n got %x\nwant %x", got, p.Headers())
		}
	case <-time.After(5 * time.Second):
		r.t.Fatalf("no reply relayed; agent %+v", r.agent.Stats())
	}
}

func (r *rig) expectNoReply() {
	r.t.Helper()
	select {
	case got := <-r.replies:
		r.t.Fatalf("unexpected reply relayed: %x", got)
	case <-time.After(50 * time.Millisecond):
	}
}

func TestRelaysOnlyRegisteredFlows(t *testing.T) {
	r := newRig(t, AgentConfig{}, ClientConfig{})
	r.waitFor("connection", r.client.Connected)
	r.register(flow(1))
	mine := reply(t, 1, rewrite.FlagACK, 1000) // payload is not relayed
	r.src.Push(reply(t, 2, rewrite.FlagACK, 0), time.Now())
	r.src.Push(mine, time.Now())
	r.expectReply(mine)
	r.expectNoReply()
	r.waitFor("no-owner count", func() bool { return r.agent.Stats().NoOwner == 1 })

	r.client.Deregister(flow(1))
	r.waitFor("deregistration", func() bool { return r.agent.Stats().Flows == 0 })
	r.src.Push(mine, time.Now())
	r.expectNoReply()
}

// TestLoneReplyNotHeldForFlushDelay checks that the relay sends a batch
// as soon as the capture has nothing more queued: a reply at a low rate
// leaves at once instead of waiting for the flush deadline (here an hour)
// and a timer wake-up.
func TestLoneReplyNotHeldForFlushDelay(t *testing.T) {
	r := newRig(t, AgentConfig{FlushDelay: time.Hour}, ClientConfig{})
	r.waitFor("connection", r.client.Connected)
	r.register(flow(1))
	for i := range 3 {
		mine := reply(t, 1, rewrite.FlagACK, 100*i)
		r.src.Push(mine, time.Now())
		r.expectReply(mine)
	}
}

func TestScenario1SynAckBeforeRegistrationIsParked(t *testing.T) {
	r := newRig(t, AgentConfig{}, ClientConfig{})
	r.waitFor("connection", r.client.Connected)
	synack := reply(t, 3, rewrite.FlagSYN|rewrite.FlagACK, 0)
	r.src.Push(synack, time.Now())
	r.waitFor("parking", func() bool { return r.agent.Stats().Parked == 1 })
	r.client.Register(flow(3))
	r.expectReply(synack)
	if st := r.agent.Stats(); st.ParkedDelivered != 1 {
		t.Fatalf("parked delivered = %d", st.ParkedDelivered)
	}
}

func TestParkedReplyExpires(t *testing.T) {
	r := newRig(t, AgentConfig{ParkTime: 20 * time.Millisecond}, ClientConfig{})
	r.waitFor("connection", r.client.Connected)
	r.src.Push(reply(t, 4, rewrite.FlagSYN|rewrite.FlagACK, 0), time.Now())
	r.waitFor("parking", func() bool { return r.agent.Stats().Parked == 1 })
	time.Sleep(50 * time.Millisecond)
	r.register(flow(4))
	r.expectNoReply()
	if st := r.agent.Stats(); st.ParkedExpired != 1 || st.ParkedDelivered != 0 {
		t.Fatalf("stale parked reply delivered: %+v", st)
	}
}

func TestIPv6ExtensionHeadersStripped(t *testing.T) {
	r := newRig(t, AgentConfig{}, ClientConfig{})
	r.waitFor("connection", r.client.Connected)
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

func TestClientReconnectsAndReplaysRegistrations(t *testing.T) {
	r := newRig(t, AgentConfig{}, ClientConfig{})
	r.waitFor("connection", r.client.Connected)
	r.register(flow(5))
	// The agent goes away: a new one takes its place on the same address.
	newLn := newPipeListener()
	r.mu.Lock()
	old := r.ln
	r.ln = newLn
	r.mu.Unlock()
	old.Close()
	r.agent.src.Close()
	src2 := capturetest.New(64)
	agent2 := NewAgent(AgentConfig{}, src2, newLn, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = agent2.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	r.waitFor("reconnect and replay", func() bool { return agent2.Stats().Flows == 1 && r.client.Connected() })
	if cs := r.client.Stats(); cs.Connects < 2 || cs.Disconnects < 1 {
		t.Fatalf("client stats after reconnect: %+v", cs)
	}
	mine := reply(t, 5, rewrite.FlagACK, 0)
	src2.Push(mine, time.Now())
	r.expectReply(mine)
}

// rawPeer speaks to the agent directly.
func rawPeer(t *testing.T, r *rig) (net.Conn, *wire.Reader) {
	t.Helper()
	r.mu.Lock()
	ln := r.ln
	r.mu.Unlock()
	c, err := ln.Dial(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	return c, wire.NewReader(c)
}

func expectPeerError(t *testing.T, rd *wire.Reader, code wire.ErrorCode) {
	t.Helper()
	for {
		typ, p, err := rd.Next()
		if err != nil {
			t.Fatalf("no error frame before the agent closed: %v", err)
		}
		if typ != wire.TypeError {
			continue
		}
		pe, err := wire.ParseError(p)
		if err != nil || pe.Code != code {
			t.Fatalf("error frame %v (%v), want code %v", pe, err, code)
		}
		return
	}
}

func TestGarbageAndVersionMismatchRefusedWithoutHarm(t *testing.T) {
	r := newRig(t, AgentConfig{}, ClientConfig{})
	r.waitFor("connection", r.client.Connected)
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
	r := newRig(t, AgentConfig{}, ClientConfig{})
	c, rd := rawPeer(t, r)
	h := wire.Hello{Version: wire.Version, Role: wire.RoleCopier, Name: "bad"}
	go func() {
		c.Write(wire.AppendHello(nil, &h))
		c.Write([]byte{0, 0, 0, 3, byte(wire.TypeRegister), 0, 1}) // count 1, no flow
	}()
	expectPeerError(t, rd, wire.CodeProtocol)
	r.waitFor("peer error counted", func() bool { return r.agent.Stats().PeerErrors == 1 })
}

func TestAuthentication(t *testing.T) {
	secret := []byte("0123456789abcdef-secret")
	t.Run("RightSecret", func(t *testing.T) {
		r := newRig(t, AgentConfig{Secret: secret}, ClientConfig{Secret: secret})
		r.waitFor("authenticated connection", r.client.Connected)
		r.register(flow(7))
	})
	t.Run("WrongSecret", func(t *testing.T) {
		r := newRig(t, AgentConfig{Secret: secret}, ClientConfig{Secret: []byte("another-secret-of-16+")})
		r.waitFor("refusal", func() bool { return r.agent.Stats().PeersRefused >= 1 })
		if r.client.Connected() || r.agent.Stats().Peers != 0 {
			t.Fatal("wrong secret accepted")
		}
		if r.client.Stats().ConnectFailures == 0 {
			t.Fatal("client did not count the failure")
		}
	})
	t.Run("NoSecret", func(t *testing.T) {
		r := newRig(t, AgentConfig{Secret: secret}, ClientConfig{})
		r.waitFor("refusal", func() bool { return r.agent.Stats().PeersRefused >= 1 })
		if r.client.Connected() {
			t.Fatal("unauthenticated client accepted")
		}
	})
	t.Run("AgentWithoutSecret", func(t *testing.T) {
		// A daemon with a secret must not talk to an agent that cannot prove it.
		r := newRig(t, AgentConfig{}, ClientConfig{Secret: secret})
		r.waitFor("refusal", func() bool { return r.client.Stats().ConnectFailures >= 1 })
		if r.client.Connected() {
			t.Fatal("daemon accepted an unauthenticated agent")
		}
	})
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

func TestRelayHeaderZeroAlloc(t *testing.T) {
	pkt := reply(t, 1, rewrite.FlagACK, 100)
	var h capturedHdr
	if n := testing.AllocsPerRun(100, func() { relayHeader(pkt, &h) }); n != 0 {
		t.Fatalf("relayHeader allocates %v per packet", n)
	}
}
