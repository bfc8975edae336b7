package main

import (
	"net/netip"
	"strings"
	"testing"
)

func TestDoctorLocalConfig(t *testing.T) {
	cfg, err := doctorConfigFrom(t, "--role", "shadow", "--local", "--to", "198.19.0.0/16", "--to", "2001:2:0:ff::/64", "--queue-num", "12")
	if err != nil {
		t.Fatal(err)
	}
	if l := cfg.local; l == nil || l.Queue != 12 || len(l.To) != 2 || l.To[1] != netip.MustParsePrefix("2001:2:0:ff::/64") {
		t.Fatalf("local config %+v", cfg.local)
	}
	def, err := doctorConfigFrom(t, "--role", "shadow", "--local", "--to", "198.19.0.0/16")
	if err != nil || def.local.Queue != 36524 {
		t.Fatalf("default queue: %+v, %v", def.local, err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--role", "shadow", "--local"}, "--to is required"},
		{[]string{"--role", "shadow", "--local", "--to", "198.19.0.0/16", "--via", "198.18.1.3"}, "--via and --prod do not apply with --local"},
		{[]string{"--role", "shadow", "--local", "--to", "198.19.0.0/16", "--queue-num", "-1"}, "--queue-num -1: want 0..65535"},
		{[]string{"--role", "assist", "--local", "-i", "eth0"}, "--local applies to --role shadow"},
	} {
		if _, err := doctorConfigFrom(t, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
}
