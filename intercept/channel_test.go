package intercept

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// agentSide is the agent's end of a connection a fakeAgent took, once its
// handshake is done.
type agentSide struct {
	conn  net.Conn
	r     *wire.Reader
	seal  *wire.Sealer
	hello wire.Hello // the client's
}

// fakeAgent is a dial function whose connections the test plays the
// agent on: each completes the agent's handshake and is handed over.
func fakeAgent(t testing.TB, secret []byte) (func(context.Context, string) (net.Conn, error), <-chan agentSide) {
	conns := make(chan agentSide, 64)
	dial := func(ctx context.Context, _ string) (net.Conn, error) {
		mine, theirs, err := socketPair()
		if err != nil {
			return nil, err
		}
		t.Cleanup(func() { theirs.Close() })
		go func() {
			r := wire.NewHandshakeReader(theirs)
			s, err := handshake(theirs, r, handshakeConfig{role: wire.RoleAgent, name: "fake", secret: secret,
				deadline: time.Now().Add(5 * time.Second)})
			if err != nil {
				theirs.Close()
				return
			}
			r.Resize(peerReadBuf, maxPeerFrame)
			conns <- agentSide{conn: theirs, r: r, seal: s.seal, hello: s.hello}
		}()
		return mine, nil
	}
	return dial, conns
}

func nextConn(t testing.TB, conns <-chan agentSide) agentSide {
	t.Helper()
	select {
	case a := <-conns:
		return a
	case <-time.After(5 * time.Second):
		t.Fatal("the client did not connect")
	}
	return agentSide{}
}

func runClient(t testing.TB, cfg ClientConfig, onReply func([]byte), log *slog.Logger) *Client {
	t.Helper()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if onReply == nil {
		onReply = func([]byte) {}
	}
	cfg.Addr = "agent"
	c := NewClient(cfg, onReply, log)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

// TestClientNeverLosesDeregistrations: while the agent does not read,
// the copier goes on registering and deregistering far more flows than
// any queue holds, without waiting; once the agent reads again it ends
// up holding exactly the flows still wanted.
func TestClientNeverLosesDeregistrations(t *testing.T) {
	dial, conns := fakeAgent(t, testSecret)
	c := runClient(t, ClientConfig{Secret: testSecret, Pools: testPools, Dial: dial}, nil, nil)
	a := nextConn(t, conns) // and do not read it yet: the client's writes fill the socket and block
	const n = 100000
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range n {
			f := flow(uint16(i))
			f.Src[15] = byte(i >> 16)
			f.Src[14] = byte(i >> 8)
			c.Register(f)
			if i%10 != 0 {
				c.Deregister(f)
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Register and Deregister waited for the connection")
	}
	type op struct {
		f   rewrite.Tuple
		reg bool
	}
	ops := make(chan op, 1024)
	go func() {
		defer close(ops)
		for {
			typ, p, err := a.r.Next()
			if err != nil {
				return
			}
			_, _ = wire.ForEachFlow(p, func(f rewrite.Tuple) { ops <- op{f, typ == wire.TypeRegister} })
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	flushed := make(chan error, 1)
	go func() { flushed <- c.Flush(ctx) }()
	// Read until the client flushed and then nothing more came for a while.
	held := make(map[rewrite.Tuple]bool)
	var quiet <-chan time.Time
	for done := false; !done; {
		select {
		case o, ok := <-ops:
			if !ok {
				t.Fatalf("connection lost; client %+v", c.Stats())
			}
			if o.reg {
				held[o.f] = true
			} else {
				delete(held, o.f)
			}
			if quiet != nil {
				quiet = time.After(200 * time.Millisecond)
			}
		case err := <-flushed:
			if err != nil {
				t.Fatalf("Flush: %v; agent holds %d flows", err, len(held))
			}
			quiet = time.After(200 * time.Millisecond)
		case <-quiet:
			done = true
		}
	}
	if len(held) != n/10 || c.Stats().Flows != n/10 {
		t.Fatalf("agent holds %d flows, client wants %d; want %d", len(held), c.Stats().Flows, n/10)
	}
}

// waitRecorder records the pauses of a client's dial loop and lets each
// pass at once.
type waitRecorder struct {
	mu     sync.Mutex
	pauses []time.Duration
}

func (w *waitRecorder) wait(d time.Duration) <-chan time.Time {
	w.mu.Lock()
	w.pauses = append(w.pauses, d)
	w.mu.Unlock()
	ch := make(chan time.Time, 1)
	ch <- time.Now()
	return ch
}

func (w *waitRecorder) get() []time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]time.Duration(nil), w.pauses...)
}

// TestReconnectBackoff: an agent that accepts and drops at once is not
// dialled in a loop: the pause doubles (jittered) across the successful
// connects until RetryMax, and resets only after a connection that lived
// StableAfter.
func TestReconnectBackoff(t *testing.T) {
	for _, stable := range []bool{false, true} {
		name := map[bool]string{false: "ShortLived", true: "Stable"}[stable]
		t.Run(name, func(t *testing.T) {
			dial, conns := fakeAgent(t, testSecret)
			var logs atomic.Int64
			log := slog.New(countHandler{&logs})
			w := &waitRecorder{}
			cfg := ClientConfig{Secret: testSecret, Pools: testPools, Dial: dial, RetryMin: 10 * time.Millisecond,
				RetryMax: 320 * time.Millisecond, StableAfter: time.Hour}
			if stable {
				cfg.StableAfter = time.Nanosecond
			}
			cfg.Addr = "agent"
			c := NewClient(cfg, func([]byte) {}, log)
			c.wait = w.wait
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); _ = c.Run(ctx) }()
			defer func() { cancel(); <-done }()
			const flaps = 12
			for range flaps {
				nextConn(t, conns).conn.Close()
			}
			deadline := time.Now().Add(5 * time.Second)
			for len(w.get()) < flaps-1 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			pauses := w.get()
			if len(pauses) < flaps-1 {
				t.Fatalf("%d pauses for %d drops", len(pauses), flaps)
			}
			d := cfg.RetryMin
			for i, p := range pauses[:flaps-1] {
				if stable {
					d = cfg.RetryMin
				}
				if p < d/2 || p > d/2+d {
					t.Fatalf("pause %d after a drop is %v, want %v ±50%%: %v", i, p, d, pauses)
				}
				d = min(2*d, cfg.RetryMax)
			}
			if !stable {
				// The connected/lost lines are held back while it flaps.
				if n := logs.Load(); n >= flaps {
					t.Fatalf("%d log lines for %d flaps", n, flaps)
				}
			}
		})
	}
}

// countHandler counts the records logged.
type countHandler struct{ n *atomic.Int64 }

func (h countHandler) Enabled(context.Context, slog.Level) bool  { return true }
func (h countHandler) Handle(context.Context, slog.Record) error { h.n.Add(1); return nil }
func (h countHandler) WithAttrs([]slog.Attr) slog.Handler        { return h }
func (h countHandler) WithGroup(string) slog.Handler             { return h }

// TestClientResyncRestoresRefused: a registration the agent refused
// (another daemon held the flow) is made again by the periodic resync
// once the flow is free.
func TestClientResyncRestoresRefused(t *testing.T) {
	a, src, ln := probeAgent(t, AgentConfig{Secret: testSecret})
	other, err := ln.DialFrom(t.Context(), netip.MustParseAddr("198.18.1.9"))
	if err != nil {
		t.Fatal(err)
	}
	rd := wire.NewHandshakeReader(other)
	s, err := handshake(other, rd, handshakeConfig{role: wire.RoleCopier, name: "squatter", secret: testSecret,
		pools: forgedPool, deadline: time.Now().Add(5 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	registerRaw(t, other, s.seal, wire.TypeRegister, flow(7))
	waitAgent(t, a, "the squatter's flow", func(s AgentStats) bool { return s.Flows == 1 })
	replies := make(chan []byte, 8)
	c := runClient(t, ClientConfig{Secret: testSecret, Pools: forgedPool, Dial: ln.Dial, ResyncInterval: 20 * time.Millisecond},
		func(h []byte) { replies <- append([]byte(nil), h...) }, nil)
	c.Register(flow(7))
	waitAgent(t, a, "the conflict", func(s AgentStats) bool { return s.FlowsConflict >= 1 })
	other.Close()
	waitAgent(t, a, "the resync", func(s AgentStats) bool { return s.Flows == 1 && s.Peers == 1 })
	if c.Stats().Resyncs == 0 {
		t.Fatal("no resync counted")
	}
	src.Push(reply(t, 7, rewrite.FlagACK, 0), time.Now())
	select {
	case <-replies:
	case <-time.After(5 * time.Second):
		t.Fatalf("no reply after the resync: %+v", a.Stats())
	}
}

// TestClientDropsInjectedReplies: a Replies frame the agent did not seal
// (injected on the path) is skipped and counted; the session and the
// genuine replies go on.
func TestClientDropsInjectedReplies(t *testing.T) {
	dial, conns := fakeAgent(t, testSecret)
	var got atomic.Int64
	c := runClient(t, ClientConfig{Secret: testSecret, Pools: testPools, Dial: dial}, func([]byte) { got.Add(1) }, nil)
	a := nextConn(t, conns)
	go func() { // drain what the client sends
		for {
			if _, _, err := a.r.Next(); err != nil && !errors.Is(err, wire.ErrBadMAC) {
				return
			}
		}
	}()
	var b wire.ReplyBatch
	b.Reset()
	b.Add(1, reply(t, 1, rewrite.FlagACK, 0))
	injected := append([]byte(nil), b.Frame()...)
	if _, err := a.conn.Write(injected); err != nil {
		t.Fatal(err)
	}
	if _, err := a.conn.Write(a.seal.Seal(b.Frame())); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for c.Stats().Replies != 1 || c.Stats().BadFrames != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%+v", c.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st := c.Stats(); !st.Connected || st.Disconnects != 0 || got.Load() != 1 {
		t.Fatalf("after an injected frame: %+v, %d replies handed over", st, got.Load())
	}
}

// TestClientAnnouncesItself: the hello carries the name, the pools, the
// flow idle time and the reply prefix the client was given.
func TestClientAnnouncesItself(t *testing.T) {
	dial, conns := fakeAgent(t, testSecret)
	runClient(t, ClientConfig{Name: "prod-7", Secret: testSecret, Pools: forgedPool, FlowIdle: 42 * time.Second,
		ReplyPrefix: 77, Dial: dial}, nil, nil)
	h := nextConn(t, conns).hello
	if h.Name != "prod-7" || h.FlowIdle != 42*time.Second || h.ReplyPrefix != 77 || !reflect.DeepEqual(h.Pools, forgedPool) {
		t.Fatalf("hello %+v", h)
	}
}
