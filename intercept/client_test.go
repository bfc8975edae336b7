package intercept

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/capture/capturetest"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

func TestClientReconnectsAndReplaysRegistrations(t *testing.T) {
	r := newRig(t, AgentConfig{}, ClientConfig{})
	r.connected()
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
	agent2 := NewAgent(AgentConfig{Secret: testSecret}, src2, newLn, slog.New(slog.NewTextHandler(io.Discard, nil)))
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

// TestDefaultClientConfig: every default is in DefaultClientConfig, and
// defaults() takes it for the zero fields only.
func TestDefaultClientConfig(t *testing.T) {
	var zero ClientConfig
	zero.defaults()
	custom := ClientConfig{Addr: "agent:1", RetryMax: time.Minute, ResyncInterval: 3 * time.Second}
	custom.defaults()
	want := DefaultClientConfig()
	want.Addr, want.RetryMax, want.ResyncInterval = "agent:1", time.Minute, 3*time.Second
	// FlowIdle is announced by the copier, none by default; a ReplyPrefix
	// of 0 is meaningful (the headers alone), so it is never defaulted.
	checkDefaults(t, DefaultClientConfig(), zero, custom, want, "FlowIdle", "ReplyPrefix")
}

// TestClientStopAfterFailedLastWrite: on shutdown the client sends its
// pending registrations; if that write fails, the connection is dropped
// (and counted) on the way, and stopping must not touch it again.
func TestClientStopAfterFailedLastWrite(t *testing.T) {
	c := NewClient(ClientConfig{Addr: "agent"}, func([]byte) {}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	l := newClientLoop(c)
	conn, other := net.Pipe()
	other.Close()
	l.cur = &clientConn{conn: conn}
	c.connected.Store(true)
	c.Register(flow(1))
	l.stop()
	if st := c.Stats(); st.Connected || st.Disconnects != 1 || st.Registered != 0 {
		t.Fatalf("after a failed last write: %+v", st)
	}
}

// TestClientFlush: Flush returns only once what was queued before it is
// written, so the agent holds it; without Run it returns at once.
func TestClientFlush(t *testing.T) {
	r := newRig(t, AgentConfig{}, ClientConfig{})
	r.connected()
	for i := range uint16(100) {
		r.client.Register(flow(i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.client.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if st := r.client.Stats(); st.Registered != 100 {
		t.Fatalf("after Flush, %d registrations written, want 100", st.Registered)
	}
	r.waitFor("the agent holding the 100 flows", func() bool { return r.agent.Stats().Flows == 100 })

	idle := NewClient(ClientConfig{Addr: "agent"}, func([]byte) {}, slog.New(slog.DiscardHandler))
	idle.Register(flow(1))
	if err := idle.Flush(ctx); err != nil {
		t.Fatalf("Flush without Run: %v", err)
	}
}
