package intercept

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/capture/capturetest"
	"github.com/tcpshadow/tcpshadow/intercept/wire"
)

// flakyListener fails its first n accepts with err, as a process out of
// descriptors does, then behaves as its pipeListener.
type flakyListener struct {
	*pipeListener
	mu  sync.Mutex
	n   int
	err error
}

func (l *flakyListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if l.n > 0 {
		l.n--
		l.mu.Unlock()
		return nil, l.err
	}
	l.mu.Unlock()
	return l.pipeListener.Accept()
}

// TestAcceptErrorsBackOff: EMFILE, ENFILE or ENOMEM from Accept pause the
// accept loop and it goes on: the agent neither exits nor stops serving.
func TestAcceptErrorsBackOff(t *testing.T) {
	for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOMEM} {
		t.Run(errno.Error(), func(t *testing.T) {
			ln := &flakyListener{pipeListener: newPipeListener(), n: 5,
				err: &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", errno)}}
			src := capturetest.New(4)
			a := NewAgent(AgentConfig{Secret: testSecret}, src, ln, slog.New(slog.DiscardHandler))
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- a.Run(ctx) }()
			defer func() { cancel(); <-done }()
			p, err := dialProbe(t, ln.pipeListener, testSecret)
			if err != nil {
				t.Fatalf("after %d failed accepts: %v", 5, err)
			}
			p.Close()
			if st := a.Stats(); st.AcceptErrors != 5 {
				t.Fatalf("AcceptErrors %d, want 5", st.AcceptErrors)
			}
			select {
			case err := <-done:
				t.Fatalf("agent stopped: %v", err)
			default:
			}
		})
	}
}

// idleConns opens n connections to ln from remote that never say a word.
func idleConns(t *testing.T, ln *pipeListener, remote netip.Addr, n int) {
	t.Helper()
	for range n {
		c, err := ln.DialFrom(context.Background(), remote)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
}

// TestHandshakeLimits: connections beyond the handshakes in flight, or
// beyond an address's share, are closed at once and counted; a copy
// daemon from another address still gets in.
func TestHandshakeLimits(t *testing.T) {
	stranger := netip.MustParseAddr("198.18.1.2")
	t.Run("PerAddress", func(t *testing.T) {
		a, _, ln := probeAgent(t, AgentConfig{Secret: testSecret, MaxConnsPerAddr: 3})
		idleConns(t, ln, stranger, 10)
		waitAgent(t, a, "7 connections shed", func(s AgentStats) bool { return s.ConnsShed == 7 })
		if _, err := dialProbe(t, ln, testSecret); err != nil {
			t.Fatalf("copy daemon from another address: %v", err)
		}
	})
	t.Run("InFlight", func(t *testing.T) {
		a, _, ln := probeAgent(t, AgentConfig{Secret: testSecret, MaxHandshakes: 4})
		for i := range 6 {
			idleConns(t, ln, netip.AddrFrom4([4]byte{198, 18, 1, byte(10 + i)}), 1)
		}
		waitAgent(t, a, "2 connections shed", func(s AgentStats) bool { return s.ConnsShed == 2 })
		// The shed connection was told why.
		c, err := ln.DialFrom(context.Background(), stranger)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		expectPeerError(t, wire.NewReader(c), wire.CodeOverload)
	})
	t.Run("Peers", func(t *testing.T) {
		a, _, ln := probeAgent(t, AgentConfig{Secret: testSecret, MaxPeers: 1})
		if _, err := dialProbe(t, ln, testSecret); err != nil {
			t.Fatal(err)
		}
		waitAgent(t, a, "the first daemon", func(s AgentStats) bool { return s.Peers == 1 })
		var pe *wire.PeerError
		if _, err := dialProbe(t, ln, testSecret); !errors.As(err, &pe) || pe.Code != wire.CodeOverload {
			t.Fatalf("second copy daemon with MaxPeers 1: %v, want an overload refusal", err)
		}
		if a.Stats().ConnsShed != 1 {
			t.Fatalf("%+v", a.Stats())
		}
	})
}

// TestHugeHelloRefusedAtOnce: a peer announcing a frame of a megabyte is
// refused from the length prefix alone, before it sends the rest, and the
// agent never buffers it.
func TestHugeHelloRefusedAtOnce(t *testing.T) {
	_, _, ln := probeAgent(t, AgentConfig{Secret: testSecret})
	c, err := ln.Dial(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	go func() {
		_, _ = c.Write(be32(wire.MaxFrameLen))
		_, _ = c.Write(make([]byte, 64<<10)) // and never the rest
	}()
	r := wire.NewReader(c)
	start := time.Now()
	for {
		typ, p, err := r.Next()
		if err != nil {
			t.Fatalf("no refusal before %v: %v", time.Since(start), err)
		}
		if typ != wire.TypeError {
			continue
		}
		pe, _ := wire.ParseError(p)
		if pe.Code != wire.CodeProtocol {
			t.Fatalf("refusal %v, want a protocol error", pe)
		}
		return
	}
}

func be32(n uint32) []byte { return []byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)} }

// deadlineConn records the deadlines set on it.
type deadlineConn struct {
	net.Conn
	mu        sync.Mutex
	deadlines []time.Time
}

func (c *deadlineConn) SetDeadline(d time.Time) error {
	c.mu.Lock()
	c.deadlines = append(c.deadlines, d)
	c.mu.Unlock()
	return c.Conn.SetDeadline(d)
}

func (c *deadlineConn) SetReadDeadline(d time.Time) error {
	c.mu.Lock()
	c.deadlines = append(c.deadlines, d)
	c.mu.Unlock()
	return c.Conn.SetReadDeadline(d)
}

// TestOneHandshakeDeadline: TLS and the hellos and authentication run
// under the one deadline the agent sets when it accepts, not one each: a
// peer slow at both gets handshakeTimeout in all.
func TestOneHandshakeDeadline(t *testing.T) {
	cert, pool := selfSigned(t, "agent.lab")
	a := NewAgent(AgentConfig{Secret: testSecret, TLS: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}},
		capturetest.New(1), newPipeListener(), slog.New(slog.DiscardHandler))
	mine, theirs, err := socketPair()
	if err != nil {
		t.Fatal(err)
	}
	defer theirs.Close()
	go func() {
		ctx := context.Background()
		conn, err := tlsClient(ctx, theirs, &tls.Config{RootCAs: pool, ServerName: "agent.lab", MinVersion: tls.VersionTLS13},
			time.Now().Add(5*time.Second))
		if err != nil {
			return
		}
		_, _ = handshake(conn, wire.NewHandshakeReader(conn), handshakeConfig{
			role: wire.RoleCopier, name: "c", secret: testSecret, pools: testPools, deadline: time.Now().Add(5 * time.Second),
		})
	}()
	dc := &deadlineConn{Conn: mine}
	p, _ := a.admit(context.Background(), dc, netip.MustParseAddr("198.18.1.1"))
	if p == nil {
		t.Fatal("handshake failed")
	}
	p.conn.Close()
	dc.mu.Lock()
	defer dc.mu.Unlock()
	var first time.Time
	for _, d := range dc.deadlines {
		if d.IsZero() {
			continue
		}
		if first.IsZero() {
			first = d
		}
		if !d.Equal(first) {
			t.Fatalf("deadlines %v: the handshake got a deadline of its own after TLS", dc.deadlines)
		}
	}
	if first.IsZero() {
		t.Fatal("no deadline set before TLS")
	}
}

// TestAgentRefusesToRunWithoutSecret: no secret and no InsecureNoAuth is
// an error at once, not an open agent.
func TestAgentRefusesToRunWithoutSecret(t *testing.T) {
	a := NewAgent(AgentConfig{}, capturetest.New(1), newPipeListener(), slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.Run(ctx); !errors.Is(err, ErrNoSecret) {
		t.Fatalf("Run without a secret: %v, want ErrNoSecret", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Run served until the context ended")
	}
}

// TestAgentHelloTellsNothing: before a peer proves the secret, the
// agent's hello carries no name; the copier learns it from the agent's
// Auth.
func TestAgentHelloTellsNothing(t *testing.T) {
	_, _, ln := probeAgent(t, AgentConfig{Name: "assist-secret-host", Secret: testSecret})
	c, err := ln.Dial(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	typ, p, err := wire.NewHandshakeReader(c).Next()
	if err != nil || typ != wire.TypeHello {
		t.Fatal(typ, err)
	}
	h, err := wire.ParseHello(p)
	if err != nil || h.Name != "" {
		t.Fatalf("agent's hello to a stranger: name %q (%v)", h.Name, err)
	}
	pc, err := dialProbe(t, ln, testSecret)
	if err != nil || pc.AgentName() != "assist-secret-host" {
		t.Fatalf("after authentication: name %q, %v", pc.AgentName(), err)
	}
}

// TestRoleMustBeCounterpart: the agent takes only a copier's hello.
func TestRoleMustBeCounterpart(t *testing.T) {
	for _, role := range []wire.Role{wire.RoleAgent, 0, 3, 255} {
		t.Run(role.String(), func(t *testing.T) {
			a, _, ln := probeAgent(t, AgentConfig{InsecureNoAuth: true})
			c, err := ln.Dial(context.Background(), "")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			h := wire.Hello{Version: wire.Version, Role: role}
			go c.Write(wire.AppendHello(nil, &h))
			expectPeerError(t, wire.NewReader(c), wire.CodeProtocol)
			waitAgent(t, a, "refusal", func(s AgentStats) bool { return s.PeersRefused == 1 && s.Peers == 0 })
		})
	}
}

// TestPerDaemonSecrets: with one secret per copy daemon name, each daemon
// gets in with its own, and neither with the other's nor under a name the
// agent does not know; a daemon's secret does not let anyone pass for the
// agent to another daemon.
func TestPerDaemonSecrets(t *testing.T) {
	s1, s2 := []byte("prod-1-secret-0123456789"), []byte("prod-2-secret-0123456789")
	_, _, ln := probeAgent(t, AgentConfig{Name: "assist", Secrets: map[string][]byte{"prod-1": s1, "prod-2": s2}})
	dial := func(name string, secret []byte) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p, err := DialProbe(ctx, ProbeConfig{Addr: "agent", Name: name, Secret: secret, Pools: testPools, Dial: ln.Dial})
		if err == nil {
			p.Close()
		}
		return err
	}
	for _, tt := range []struct {
		name   string
		secret []byte
		ok     bool
	}{{"prod-1", s1, true}, {"prod-2", s2, true}, {"prod-2", s1, false}, {"prod-3", s1, false}, {"", s1, false}} {
		err := dial(tt.name, tt.secret)
		var pe *wire.PeerError
		if tt.ok != (err == nil) || !tt.ok && (!errors.As(err, &pe) || pe.Code != wire.CodeAuth) {
			t.Errorf("copy daemon %q: %v, want ok %v", tt.name, err, tt.ok)
		}
	}
	// prod-1, holding s1, plays the agent to prod-2: refused.
	mine, theirs, err := socketPair()
	if err != nil {
		t.Fatal(err)
	}
	defer mine.Close()
	defer theirs.Close()
	go func() {
		_, _ = handshake(theirs, wire.NewHandshakeReader(theirs), handshakeConfig{role: wire.RoleAgent, name: "assist",
			secret: s1, deadline: time.Now().Add(5 * time.Second)})
	}()
	_, err = handshake(mine, wire.NewHandshakeReader(mine), handshakeConfig{role: wire.RoleCopier, name: "prod-2",
		secret: s2, deadline: time.Now().Add(5 * time.Second)})
	if !errors.Is(err, ErrAuth) && !isPeerCode(err, wire.CodeAuth) {
		t.Fatalf("prod-2 against an agent holding prod-1's secret: %v, want an authentication failure", err)
	}
}

func isPeerCode(err error, code wire.ErrorCode) bool {
	var pe *wire.PeerError
	return errors.As(err, &pe) && pe.Code == code
}

// TestRefusalLog: an address is logged once per TTL, however many
// addresses come between, and memory stays at the bound.
func TestRefusalLog(t *testing.T) {
	l := newRefusalLog(maxRefusedLogged, time.Hour)
	now := time.Unix(1000, 0)
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}) }
	logged := 0
	for round := range 3 {
		for i := range 5000 {
			// The same address tried again between every other one.
			if l.first(addr(i), now) {
				logged++
			}
			if l.first(netip.MustParseAddr("198.18.9.9"), now) {
				logged++
			}
		}
		if round == 0 && logged != 5001 {
			t.Fatalf("first round: %d lines for 5001 addresses", logged)
		}
	}
	// Rounds 2 and 3: the 5000 cycle through a 4096-entry LRU, so each
	// comes back as new; the busy address never does.
	if want := 5001 + 2*5000; logged != want {
		t.Fatalf("%d lines, want %d", logged, want)
	}
	if len(l.seen) > maxRefusedLogged {
		t.Fatalf("%d addresses remembered", len(l.seen))
	}
	if !l.first(netip.MustParseAddr("198.18.9.9"), now.Add(2*time.Hour)) {
		t.Fatal("an address refused again after the TTL is not logged")
	}
}

// TestPeerDownNeverBlocks: a peer ending after the relay returned does
// not wait for it, even with the ops queue full.
func TestPeerDownNeverBlocks(t *testing.T) {
	a := NewAgent(AgentConfig{Secret: testSecret}, capturetest.New(1), newPipeListener(), slog.New(slog.DiscardHandler))
	for range cap(a.ops) {
		a.ops <- flowOp{}
	}
	close(a.relayDone)
	done := make(chan bool)
	go func() { done <- a.sendOp(nil, flowOp{kind: opPeerDown}) }()
	select {
	case ok := <-done:
		if ok {
			t.Fatal("op taken by a relay that returned")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("opPeerDown blocked after the relay returned")
	}
}
