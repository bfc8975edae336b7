package main

import (
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"

	"github.com/tcpshadow/tcpshadow/internal/testcert"
)

// TestTLSFlags checks that the TLS flags of the three commands that speak
// the control channel build the configurations they name: the agent's
// certificate, and on copy and doctor a CA pool that verifies it under
// the expected server name.
func TestTLSFlags(t *testing.T) {
	cert := testcert.New(t, "198.18.1.3", "agent.lab")
	certFile, keyFile := cert.Files(t)
	verifies := func(t *testing.T, c *tls.Config, name string) {
		t.Helper()
		if c == nil {
			t.Fatal("no TLS configuration")
		}
		if c.ServerName != name || c.MinVersion != tls.VersionTLS13 {
			t.Errorf("server name %q, min version %x; want %q, TLS 1.3", c.ServerName, c.MinVersion, name)
		}
		if _, err := cert.TLS.Leaf.Verify(x509.VerifyOptions{Roots: c.RootCAs, DNSName: c.ServerName}); err != nil {
			t.Errorf("the agent's certificate does not verify against --tls-ca: %v", err)
		}
	}

	t.Run("Intercept", func(t *testing.T) {
		cfg, err := interceptOptionsFrom(t, "-i", "eth0", "--insecure-no-auth", "--tls-cert", certFile, "--tls-key", keyFile).config()
		if err != nil {
			t.Fatal(err)
		}
		c := cfg.Agent.TLS
		if c == nil || len(c.Certificates) != 1 || c.MinVersion != tls.VersionTLS13 {
			t.Fatalf("agent TLS config %+v", c)
		}
		if !c.Certificates[0].Leaf.Equal(cert.TLS.Leaf) {
			t.Error("the agent serves another certificate than --tls-cert")
		}
	})
	t.Run("Copy", func(t *testing.T) {
		base := []string{"-i", "eth0", "-x", "80-198.18.1.2:80", "--intercept", "198.18.1.3"}
		cfg, err := copyOptionsFrom(t, append(base, "--tls-ca", certFile)...).config()
		if err != nil {
			t.Fatal(err)
		}
		verifies(t, cfg.Client.TLS, "198.18.1.3") // the --intercept host by default
		cfg, err = copyOptionsFrom(t, append(base, "--tls-ca", certFile, "--tls-server-name", "agent.lab")...).config()
		if err != nil {
			t.Fatal(err)
		}
		verifies(t, cfg.Client.TLS, "agent.lab")
		if cfg, err = copyOptionsFrom(t, base...).config(); err != nil || cfg.Client.TLS != nil {
			t.Errorf("without --tls-ca: TLS %v, %v; want plain TCP", cfg.Client.TLS, err)
		}
	})
	t.Run("Doctor", func(t *testing.T) {
		prod := []string{"--role", "prod", "-i", "eth0", "-s", "198.18.1.3"}
		cfg, err := doctorConfigFrom(t, append(prod, "--tls-ca", certFile, "--tls-server-name", "agent.lab")...)
		if err != nil {
			t.Fatal(err)
		}
		verifies(t, cfg.tls, "agent.lab")
		if p := cfg.agentProbe(); p.TLS != cfg.tls || p.Addr != "198.18.1.3:36524" {
			t.Errorf("doctor connects to %s with TLS %p, want %p", p.Addr, p.TLS, cfg.tls)
		}
		for _, tt := range []struct {
			args []string
			want string
		}{
			{append(prod, "--tls-server-name", "agent.lab"), "--tls-server-name needs --tls-ca"},
			{append(prod, "--tls-ca", keyFile), "--tls-ca"},
			{[]string{"--role", "shadow", "--via", "198.18.1.3", "--to", "198.19.0.0/16", "--tls-ca", certFile}, "--tls-ca applies to --role prod"},
		} {
			if _, err := doctorConfigFrom(t, tt.args...); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("%q: error %v, want it to say %q", tt.args, err, tt.want)
			}
		}
	})
}
