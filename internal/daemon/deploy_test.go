package daemon

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/capture"
	"github.com/tcpshadow/tcpshadow/capture/capturetest"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

func mirrorCopy() CopyConfig {
	c := validCopy()
	c.Capture.Interface = "" // not needed on a mirror target
	c.Mirror = capture.MirrorConfig{Proto: capture.MirrorVXLAN, Addr: netip.MustParseAddrPort("198.18.1.3:4789"), VNI: 7}
	return c
}

// TestMirrorValidateNamesTheField: a mirror session replaces the
// interface, and its fields are checked instead.
func TestMirrorValidateNamesTheField(t *testing.T) {
	if c := mirrorCopy(); c.Validate() != nil {
		t.Fatalf("valid mirror config refused: %v", c.Validate())
	}
	for _, tt := range []struct {
		field  string
		mutate func(*CopyConfig)
	}{
		{"Mirror.Proto", func(c *CopyConfig) { c.Mirror.Proto = "gre" }},
		{"Mirror.Addr", func(c *CopyConfig) { c.Mirror.Addr = netip.AddrPort{} }},
		{"Mirror.Addr", func(c *CopyConfig) { c.Mirror.Addr = netip.MustParseAddrPort("198.18.1.3:0") }},
		{"Mirror.VNI", func(c *CopyConfig) { c.Mirror.VNI = 1 << 24 }},
		{"Engine.TrustInbound", func(c *CopyConfig) { c.Engine.TrustInbound = true }},
		{"Send", func(c *CopyConfig) { c.Send = "carrier-pigeon" }},
	} {
		c := mirrorCopy()
		tt.mutate(&c)
		checkField(t, c.Validate(), tt.field)
	}
	c := validCopy()
	c.Send = ""
	checkField(t, c.Validate(), "Send")
	if m := mirrorCopy(); func() bool { _, ok := m.ProdCaptureConfig(); return ok }() {
		t.Fatal("a mirror target asks for an outbound capture of prod's side")
	}
}

// TestRunCopyFromMirror: with a mirror session, the daemon opens no
// capture on an interface, and one source carries both sides: the
// client's SYN, prod's SYN-ACK and the client's ACK open the session on
// the shadow, as the two captures do on prod.
func TestRunCopyFromMirror(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	src, sent := capturetest.New(16), &recordingSender{}
	h := testHost(nil, nil, sent, nil)
	h.openCapture = func(capture.Config) (capture.Source, error) {
		return nil, errors.New("an interface capture opened on a mirror target")
	}
	var asked capture.MirrorConfig
	h.openMirror = func(m capture.MirrorConfig) (capture.Source, error) { asked = m; return src, nil }
	cfg := mirrorCopy()
	cfg.Client.Addr = "127.0.0.1:1" // nobody: the copy runs without its agent
	var log lockedBuffer
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan error, 1)
	go func() { done <- runCopy(ctx, cfg, slog.New(slog.NewTextHandler(&log, nil)), nil, h) }()

	prodAddr := netip.MustParseAddrPort("198.18.0.1:80")
	src.Push(segment(t, rewrite.Segment{Src: client, Dst: prodAddr, Seq: 1000, Flags: rewrite.FlagSYN, Window: 64240}), time.Now())
	src.Push(segment(t, rewrite.Segment{Src: prodAddr, Dst: client, Seq: 7000, Ack: 1001, Flags: rewrite.FlagSYN | rewrite.FlagACK, Window: 64240}), time.Now())
	src.Push(segment(t, rewrite.Segment{Src: client, Dst: prodAddr, Seq: 1001, Ack: 7001, Flags: rewrite.FlagACK, Window: 64240}), time.Now())
	waitFor(t, "SYN sent to the shadow", 5*time.Second, func() bool { return len(sent.sent(t)) == 1 })
	syn := sent.sent(t)[0]
	if syn.TCP().Flags() != rewrite.FlagSYN || netip.AddrPortFrom(syn.DstAddr(), syn.TCP().DstPort()) != shadow {
		t.Fatalf("sent flags %#x to %v, want a SYN to the shadow", syn.TCP().Flags(), syn.DstAddr())
	}
	if asked.Addr != cfg.Mirror.Addr || asked.BufferSize != cfg.Capture.BufferSize {
		t.Fatalf("mirror opened with %+v", asked)
	}
	if !logHas(&log, "deployment", "vxlan://198.18.1.3:4789?vni=7") {
		t.Fatalf("log does not name the mirror session:\n%s", log.String())
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
