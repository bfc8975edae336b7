package main

import (
	"strings"
	"testing"

	"github.com/tcpshadow/tcpshadow/intercept/tunnel"
	"github.com/tcpshadow/tcpshadow/internal/daemon"
)

// TestCopyConfigTransport: --transport udp sends through the tunnel on
// --tunnel-port (the agent's default one unless given), caps the MSS so
// a datagram fits a 1500-byte path, and needs a secret and a pool; a
// mistake names its flag.
func TestCopyConfigTransport(t *testing.T) {
	secret := writeSecret(t, "0123456789abcdef-tunnel\n")
	base := append(append([]string(nil), copyBase...), "--map", "80-198.18.1.2:80")
	with := func(args ...string) []string { return append(append([]string(nil), base...), args...) }
	cfg, err := copyOptionsFrom(t, with("--transport", "udp", "--secret-file", secret, "--client-pool", "198.19.0.0/16")...).config()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Transport != daemon.TransportUDP || cfg.TunnelPort != tunnel.DefaultPort {
		t.Fatalf("transport %q port %d", cfg.Transport, cfg.TunnelPort)
	}
	if e := cfg.EngineConfig(); e.MSS != daemon.TunnelMSS {
		t.Fatalf("MSS through the tunnel %d, want %d", e.MSS, daemon.TunnelMSS)
	}
	cfg, err = copyOptionsFrom(t, with("--transport", "udp", "--tunnel-port", "4000", "--secret-file", secret, "--client-pool", "198.19.0.0/16")...).config()
	if err != nil || cfg.TunnelPort != 4000 {
		t.Fatalf("--tunnel-port 4000: %v %d", err, cfg.TunnelPort)
	}
	plain, err := copyOptionsFrom(t, base...).config()
	if err != nil || plain.Transport != daemon.TransportDirect {
		t.Fatalf("default transport: %v %q", err, plain.Transport)
	}
	if e := plain.EngineConfig(); e.MSS != daemon.DefaultCopyConfig().Engine.MSS {
		t.Fatalf("direct MSS %d changed", e.MSS)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{with("--transport", "carrier-pigeon"), "--transport"},
		{with("--transport", "udp", "--client-pool", "198.19.0.0/16"), "--transport"}, // no secret
		{with("--transport", "udp", "--secret-file", secret), "--transport"},          // no pool
		{with("--transport", "udp", "--secret-file", secret, "--client-pool", "198.19.0.0/16", "--tunnel-port", "0"), "--tunnel-port"},
		{with("--transport", "udp", "--secret-file", secret, "--client-pool", "198.19.0.0/16", "--send", "datalink"), "--send"},
	} {
		_, err := copyOptionsFrom(t, tt.args...).config()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: error %v, want one containing %q", tt.args, err, tt.want)
		}
	}
}

// TestInterceptLocalTunnel: the two-host agent receives the tunnel with
// --tunnel, on the default port unless told another; it needs --local
// and a secret.
func TestInterceptLocalTunnel(t *testing.T) {
	secret := writeSecret(t, "0123456789abcdef-tunnel\n")
	for _, tc := range []struct {
		args   []string
		tunnel bool
		port   int
	}{
		{nil, false, tunnel.DefaultPort},
		{[]string{"--tunnel"}, true, tunnel.DefaultPort},
		{[]string{"--tunnel", "--tunnel-port", "4000"}, true, 4000},
	} {
		args := append([]string{"--local", "--to", "198.19.0.0/16", "--secret-file", secret}, tc.args...)
		cfg, err := interceptOptionsFrom(t, args...).config()
		if err != nil || cfg.Local.Tunnel != tc.tunnel || cfg.Local.TunnelPort != tc.port {
			t.Fatalf("%v: %v, %+v", tc.args, err, cfg.Local)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--local", "--to", "198.19.0.0/16", "--secret-file", secret, "--tunnel", "--tunnel-port", "70000"}, "--tunnel-port 70000"},
		{[]string{"--local", "--to", "198.19.0.0/16", "--insecure-no-auth", "--tunnel"}, "--tunnel"},
		{[]string{"-i", "eth0", "--secret-file", secret, "--tunnel"}, "--tunnel needs --local"},
	} {
		_, err := interceptOptionsFrom(t, tc.args...).config()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
}
