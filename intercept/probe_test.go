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

	"github.com/tcpshadow/tcpshadow/capture/capturetest"
	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// probeAgent runs an agent on an in-memory listener for probe tests.
func probeAgent(t testing.TB, cfg AgentConfig) (*Agent, *capturetest.Source, *pipeListener) {
	t.Helper()
	if len(cfg.Secret) == 0 && len(cfg.Secrets) == 0 {
		cfg.InsecureNoAuth = true // the probe tests without a secret are not about it
	}
	src := capturetest.New(16)
	ln := newPipeListener()
	a := NewAgent(cfg, src, ln, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = a.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	return a, src, ln
}

func dialProbe(t testing.TB, ln *pipeListener, secret []byte) (*ProbeConn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p, err := DialProbe(ctx, ProbeConfig{Addr: "agent", Name: "doctor", Secret: secret, Pools: testPools, Dial: ln.Dial})
	if err == nil {
		t.Cleanup(func() { p.Close() })
	}
	return p, err
}

func waitAgent(t testing.TB, a *Agent, what string, cond func(AgentStats) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond(a.Stats()) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %+v", what, a.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestProbeRegistersAndReceivesReplies walks the doctor's probe through
// the real agent: handshake, a synchronous registration, the relayed
// SYN-ACK, de-registration.
func TestProbeRegistersAndReceivesReplies(t *testing.T) {
	secret := []byte("0123456789abcdef-secret")
	a, src, ln := probeAgent(t, AgentConfig{Name: "assist-1", Secret: secret})
	p, err := dialProbe(t, ln, secret)
	if err != nil {
		t.Fatal(err)
	}
	if p.AgentName() != "assist-1" {
		t.Fatalf("agent name %q", p.AgentName())
	}
	deadline := time.Now().Add(5 * time.Second)
	if err := p.Register(flow(11), deadline); err != nil {
		t.Fatal(err)
	}
	waitAgent(t, a, "registration", func(s AgentStats) bool { return s.Flows == 1 })
	synack := reply(t, 11, rewrite.FlagSYN|rewrite.FlagACK, 0)
	src.Push(reply(t, 12, rewrite.FlagACK, 0), time.Now()) // someone else's
	src.Push(synack, time.Now())
	got, err := p.NextReply(deadline)
	if err != nil {
		t.Fatal(err)
	}
	var want rewrite.Packet
	if err := want.Decode(synack); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Headers()) {
		t.Fatalf("relayed header\n got %x\nwant %x", got, want.Headers())
	}
	// A wait that times out leaves the connection usable.
	if _, err := p.NextReply(time.Now().Add(20 * time.Millisecond)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("NextReply with nothing relayed: %v, want a deadline error", err)
	}
	rst := reply(t, 11, rewrite.FlagRST|rewrite.FlagACK, 0)
	src.Push(rst, time.Now())
	if got, err = p.NextReply(deadline); err != nil || got[len(got)-20+13] != rewrite.FlagRST|rewrite.FlagACK {
		t.Fatalf("reply after a timed-out wait: %x, %v", got, err)
	}
	if err := p.Deregister(flow(11), deadline); err != nil {
		t.Fatal(err)
	}
	waitAgent(t, a, "de-registration", func(s AgentStats) bool { return s.Flows == 0 })
	if err := p.Ping(deadline); err != nil {
		t.Fatal(err)
	}
}

// TestProbeParkedSynAckDelivered: a SYN-ACK that beats the probe's
// registration is parked by the agent and still reaches the probe.
func TestProbeParkedSynAckDelivered(t *testing.T) {
	a, src, ln := probeAgent(t, AgentConfig{})
	p, err := dialProbe(t, ln, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitAgent(t, a, "the probe's pools known", func(s AgentStats) bool { return s.Peers == 1 })
	src.Push(reply(t, 13, rewrite.FlagSYN|rewrite.FlagACK, 0), time.Now())
	waitAgent(t, a, "parking", func(s AgentStats) bool { return s.Parked == 1 })
	deadline := time.Now().Add(5 * time.Second)
	if err := p.Register(flow(13), deadline); err != nil {
		t.Fatal(err)
	}
	if _, err := p.NextReply(deadline); err != nil {
		t.Fatal(err)
	}
}

// TestProbeErrorsSayWhy checks each way a probe fails can be told apart:
// unreachable (the dial error), refused with the refusal's code.
func TestProbeErrorsSayWhy(t *testing.T) {
	secret := []byte("0123456789abcdef-secret")
	refusal := func(t *testing.T, err error, code wire.ErrorCode) {
		t.Helper()
		var pe *wire.PeerError
		if !errors.As(err, &pe) || pe.Code != code {
			t.Fatalf("error %v, want a refusal with code %v", err, code)
		}
		if errors.Is(err, ErrUnreachable) {
			t.Fatalf("refusal %v reported as unreachable", err)
		}
	}
	t.Run("WrongSecret", func(t *testing.T) {
		_, _, ln := probeAgent(t, AgentConfig{Secret: secret})
		_, err := dialProbe(t, ln, []byte("another-secret-of-16+"))
		refusal(t, err, wire.CodeAuth)
	})
	t.Run("NoSecret", func(t *testing.T) {
		_, _, ln := probeAgent(t, AgentConfig{Secret: secret})
		_, err := dialProbe(t, ln, nil)
		refusal(t, err, wire.CodeAuth)
	})
	t.Run("Allowlist", func(t *testing.T) {
		_, _, ln := probeAgent(t, AgentConfig{Allow: []netip.Prefix{netip.MustParsePrefix("198.18.9.0/24")}})
		_, err := dialProbe(t, ln, nil)
		refusal(t, err, wire.CodeNotAllowed)
	})
	t.Run("Unreachable", func(t *testing.T) {
		ln := newPipeListener()
		ln.Close()
		_, err := dialProbe(t, ln, nil)
		if !errors.Is(err, ErrUnreachable) {
			t.Fatalf("error %v, want ErrUnreachable", err)
		}
	})
	t.Run("SilentPeerBoundedByContext", func(t *testing.T) {
		// Something accepts and never speaks: ctx, not the 5 s handshake
		// timeout, ends the wait.
		var held []net.Conn
		t.Cleanup(func() {
			for _, c := range held {
				c.Close()
			}
		})
		dial := func(context.Context, string) (net.Conn, error) {
			c, s, err := socketPair()
			held = append(held, s)
			return c, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_, err := DialProbe(ctx, ProbeConfig{Addr: "agent", Dial: dial})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("error %v, want the context's deadline", err)
		}
	})
}
