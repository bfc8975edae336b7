package intercept

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/testcert"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

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
		// The agent counts its refusal before the client reads it.
		r.waitFor("the client counting the failure", func() bool { return r.client.Stats().ConnectFailures >= 1 })
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
		r := newRig(t, AgentConfig{InsecureNoAuth: true}, ClientConfig{Secret: secret})
		r.waitFor("refusal", func() bool { return r.client.Stats().ConnectFailures >= 1 })
		if r.client.Connected() {
			t.Fatal("daemon accepted an unauthenticated agent")
		}
	})
}

// selfSigned returns a certificate for name and a pool trusting it.
func selfSigned(t testing.TB, name string) (tls.Certificate, *x509.CertPool) {
	c := testcert.New(t, name)
	return c.TLS, c.Pool
}

func TestTLSControlChannel(t *testing.T) {
	cert, pool := selfSigned(t, "agent.lab")
	_, otherPool := selfSigned(t, "agent.lab")
	secret := []byte("0123456789abcdef-secret")
	server := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	t.Run("Relays", func(t *testing.T) {
		r := newRig(t, AgentConfig{Secret: secret, TLS: server},
			ClientConfig{Secret: secret, TLS: &tls.Config{RootCAs: pool, ServerName: "agent.lab", MinVersion: tls.VersionTLS13}})
		r.waitFor("TLS connection", r.client.Connected)
		r.register(flow(9))
		mine := reply(t, 9, rewrite.FlagACK, 10)
		r.src.Push(mine, time.Now())
		r.expectReply(mine)
	})
	t.Run("UntrustedAgentRefused", func(t *testing.T) {
		r := newRig(t, AgentConfig{Secret: secret, TLS: server},
			ClientConfig{Secret: secret, TLS: &tls.Config{RootCAs: otherPool, ServerName: "agent.lab", MinVersion: tls.VersionTLS13}})
		r.waitFor("refusal", func() bool { return r.client.Stats().ConnectFailures >= 1 })
		if r.client.Connected() {
			t.Fatal("connected to an agent whose certificate is not trusted")
		}
	})
	t.Run("PlainClientRefused", func(t *testing.T) {
		r := newRig(t, AgentConfig{Secret: secret, TLS: server}, ClientConfig{Secret: secret})
		r.waitFor("refusal", func() bool { return r.agent.Stats().PeersRefused >= 1 })
		if r.client.Connected() || r.agent.Stats().Peers != 0 {
			t.Fatal("a plain-TCP daemon was accepted by a TLS agent")
		}
	})
}

// TestTLSFailureClosesConn checks that a failed TLS handshake closes the
// TCP connection under it on both sides: the client reconnects every
// backoff and the agent serves any peer, so a leak here would be one file
// descriptor per attempt, for as long as the daemons run.
func TestTLSFailureClosesConn(t *testing.T) {
	cert, _ := selfSigned(t, "agent.lab")
	_, otherPool := selfSigned(t, "agent.lab")
	for _, side := range []string{"client", "server"} {
		t.Run(side, func(t *testing.T) {
			mine, peer := net.Pipe()
			defer peer.Close()
			// The peer speaks no TLS: it reads what comes and writes a
			// plain hello (both at once: the pipe is synchronous).
			go func() { _, _ = io.Copy(io.Discard, peer) }()
			go func() { _, _ = peer.Write([]byte("not a TLS record, a plain hello frame.....")) }()
			ctx := context.Background()
			var err error
			if side == "client" {
				_, err = tlsClient(ctx, mine, &tls.Config{RootCAs: otherPool, ServerName: "agent.lab", MinVersion: tls.VersionTLS13}, time.Now().Add(5*time.Second))
			} else {
				_, err = tlsServer(ctx, mine, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}, time.Now().Add(5*time.Second))
			}
			if err == nil {
				t.Fatal("TLS handshake with a plain peer succeeded")
			}
			if _, werr := mine.Write([]byte{0}); !errors.Is(werr, io.ErrClosedPipe) {
				t.Fatalf("after %v the connection is still open (write: %v)", err, werr)
			}
		})
	}
}
