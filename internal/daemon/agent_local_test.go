package daemon

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/tcpshadow/tcpshadow/capture/capturetest"
)

// TestAgentLocalValidate: in the two-host mode the capture interface is
// not needed, and the pools and queue are checked, each error naming its
// field.
func TestAgentLocalValidate(t *testing.T) {
	good := func() AgentConfig {
		c := DefaultAgentConfig()
		c.Agent.InsecureNoAuth = true
		l := DefaultLocalConfig()
		l.Pools = []netip.Prefix{netip.MustParsePrefix("198.19.0.0/16"), netip.MustParsePrefix("2001:2:0:ff::/64")}
		c.Local = &l
		return c
	}
	c := good()
	if err := c.Validate(); err != nil {
		t.Fatalf("valid two-host config (no interface): %v", err)
	}
	for _, tc := range []struct {
		field string
		mod   func(*LocalConfig)
	}{
		{"Local.Pools", func(l *LocalConfig) { l.Pools = nil }},
		{"Local.Pools", func(l *LocalConfig) { l.Pools = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")} }},
		{"Local.Pools", func(l *LocalConfig) { l.Pools = []netip.Prefix{netip.MustParsePrefix("2001::/31")} }},
		{"Local.Queue.MaxLen", func(l *LocalConfig) { l.Queue.MaxLen = 0 }},
		{"Local.Queue.CopyRange", func(l *LocalConfig) { l.Queue.CopyRange = 40 }},
	} {
		c := good()
		tc.mod(c.Local)
		var fe *FieldError
		if err := c.Validate(); !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("%s: %v", tc.field, err)
		}
	}
}

// TestLocalSamplesOnlyForTheQueue: an agent capturing with pcap has no
// queue metrics.
func TestLocalSamplesOnlyForTheQueue(t *testing.T) {
	if s := LocalSamples(capturetest.New(1)); s != nil {
		t.Fatalf("samples for a pcap source: %v", s)
	}
}
