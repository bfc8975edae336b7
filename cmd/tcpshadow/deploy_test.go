package main

import (
	"strings"
	"testing"

	"github.com/tcpshadow/tcpshadow/capture"
	"github.com/tcpshadow/tcpshadow/internal/daemon"
)

// TestCopyConfigMirrorAndSend: --capture replaces --iface with a mirror
// session, --send picks the send path, and mistakes name their flag.
func TestCopyConfigMirrorAndSend(t *testing.T) {
	mirror := []string{"--capture", "geneve://198.18.1.3?vni=9", "--intercept", "198.18.1.3", "--map", "80-198.18.1.2:80", "--send", "datalink"}
	cfg, err := copyOptionsFrom(t, mirror...).config()
	if err != nil {
		t.Fatal(err)
	}
	want := capture.MirrorConfig{Proto: capture.MirrorGeneve, Addr: ap("198.18.1.3:6081"), VNI: 9}
	if cfg.Mirror != want || cfg.Send != daemon.SendDatalink || cfg.Capture.Interface != "" {
		t.Fatalf("mirror %+v send %q iface %q", cfg.Mirror, cfg.Send, cfg.Capture.Interface)
	}
	if _, ok := cfg.ProdCaptureConfig(); ok {
		t.Fatal("an outbound capture on a mirror target")
	}
	plain, err := copyOptionsFrom(t, append(copyBase, "--map", "80-198.18.1.2:80")...).config()
	if err != nil {
		t.Fatal(err)
	}
	if plain.Mirror.Proto != "" || plain.Send != daemon.SendRaw {
		t.Fatalf("defaults: mirror %+v send %q", plain.Mirror, plain.Send)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--intercept", "198.18.1.3", "--map", "80-198.18.1.2:80"}, "--iface is required (or --capture"},
		{append(copyBase, "--map", "80-198.18.1.2:80", "--capture", "vxlan://198.18.1.3"), "--iface or --capture, not both"},
		{[]string{"--capture", "gre://198.18.1.3", "--intercept", "198.18.1.3", "--map", "80-198.18.1.2:80"}, "--capture: mirror"},
		{[]string{"--capture", "vxlan://198.18.1.3?vni=x", "--intercept", "198.18.1.3", "--map", "80-198.18.1.2:80"}, "--capture: mirror"},
		{append(copyBase, "--map", "80-198.18.1.2:80", "--send", "smoke"), "--send"},
		{[]string{"--capture", "vxlan://198.18.1.3", "--intercept", "198.18.1.3", "--map", "80-198.18.1.2:80", "--trust-inbound"}, "--trust-inbound"},
	} {
		_, err := copyOptionsFrom(t, tt.args...).config()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: error %v, want one containing %q", tt.args, err, tt.want)
		}
	}
}
