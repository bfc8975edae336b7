package intercept

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/rewrite"
)

// selfSigned returns a certificate for name and a pool trusting it.
func selfSigned(t *testing.T, name string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		DNSNames: []string{name}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
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
