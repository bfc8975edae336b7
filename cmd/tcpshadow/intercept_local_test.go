package main

import (
	"net/netip"
	"strings"
	"testing"
)

// TestInterceptLocalConfig: --local with --to pools fills the two-host
// configuration and needs no --iface.
func TestInterceptLocalConfig(t *testing.T) {
	cfg, err := interceptOptionsFrom(t, "--local", "--to", "198.19.0.0/16", "--to", "2001:2:0:ff::1/64",
		"--queue-num", "7", "--queue-len", "100", "--insecure-no-auth").config()
	if err != nil {
		t.Fatal(err)
	}
	l := cfg.Local
	if l == nil || len(l.Pools) != 2 || l.Pools[0] != netip.MustParsePrefix("198.19.0.0/16") ||
		l.Pools[1] != netip.MustParsePrefix("2001:2:0:ff::/64") || l.Queue.Num != 7 || l.Queue.MaxLen != 100 {
		t.Fatalf("local config %+v", l)
	}
	def, err := interceptOptionsFrom(t, "--local", "--to", "198.19.0.0/16", "--insecure-no-auth").config()
	if err != nil {
		t.Fatal(err)
	}
	if def.Local.Queue.Num != 36524 || def.Local.Queue.MaxLen != 8192 || def.Local.Queue.CopyRange != 256 {
		t.Fatalf("default queue %+v", def.Local.Queue)
	}
	plain, err := interceptOptionsFrom(t, "-i", "eth0", "--insecure-no-auth").config()
	if err != nil || plain.Local != nil {
		t.Fatalf("without --local: %+v, %v", plain.Local, err)
	}
}

func TestInterceptLocalConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--local"}, "--local needs --to"},
		{[]string{"--local", "--to", "198.19.0.0/16", "-i", "eth0"}, "--iface and --filter do not apply"},
		{[]string{"--to", "198.19.0.0/16", "-i", "eth0"}, "--to needs --local"},
		{[]string{"--local", "--to", "nonsense"}, `--to "nonsense": want a prefix`},
		{[]string{"--local", "--to", "198.0.0.0/7"}, "want a prefix of at least /8"},
		{[]string{"--local", "--to", "2001::/16"}, "want a prefix of at least /32"},
		{[]string{"--local", "--to", "198.19.0.0/16", "--queue-num", "70000"}, "--queue-num 70000: want 0..65535"},
		{[]string{"--local", "--to", "198.19.0.0/16", "--queue-len", "0"}, "--queue-len 0: want at least 1"},
	} {
		_, err := interceptOptionsFrom(t, append(tc.args, "--insecure-no-auth")...).config()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
}

// TestInterceptLocalDerived: config check says what the two-host mode
// diverts, in place of the capture filter.
func TestInterceptLocalDerived(t *testing.T) {
	cfg, err := interceptOptionsFrom(t, "--local", "--to", "198.19.0.0/16", "--insecure-no-auth").config()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, d := range interceptDerived(cfg) {
		found = found || d[0] == "two hosts"
		if d[0] == "capture filter" {
			t.Errorf("derived a capture filter for --local: %q", d[1])
		}
		if d[0] == "two hosts" && d[1] != "this host's packets to 198.19.0.0/16 diverted to NFQUEUE 36524 (at most 8192 held), nftables table inet tcpshadow_local" {
			t.Errorf("derived %q", d[1])
		}
	}
	if !found {
		t.Error("nothing derived for the two-host mode")
	}
}
