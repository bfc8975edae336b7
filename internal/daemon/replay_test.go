package daemon

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/capture/capturetest"
	"github.com/tcpshadow/tcpshadow/internal/pcapfile"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

func validReplay(files ...string) ReplayConfig {
	c := DefaultReplayConfig()
	c.Copy = validCopy()
	c.Copy.Capture.Interface = ""
	c.Files = files
	return c
}

func TestReplayValidate(t *testing.T) {
	c := validReplay("x.pcap")
	if err := c.Validate(); err != nil {
		t.Fatalf("valid: %v", err)
	}
	for _, bad := range []struct {
		field string
		set   func(*ReplayConfig)
	}{
		{"Files", func(c *ReplayConfig) { c.Files = nil }},
		{"Speed", func(c *ReplayConfig) { c.Speed = 0 }},
		{"Speed", func(c *ReplayConfig) { c.Speed = 1001 }},
		{"Loop", func(c *ReplayConfig) { c.Loop = 256 }},
		{"Settle", func(c *ReplayConfig) { c.Settle = -time.Second }},
		{"Copy.Mirror.Proto", func(c *ReplayConfig) { c.Copy.Mirror.Proto = "vxlan" }},
		{"Copy.Client.Addr", func(c *ReplayConfig) { c.Copy.Client.Addr = "" }},
		{"Copy.Engine.MSS", func(c *ReplayConfig) { c.Copy.Engine.MSS = 1 }},
	} {
		c := validReplay("x.pcap")
		bad.set(&c)
		var fe *FieldError
		if err := c.Validate(); !errors.As(err, &fe) || fe.Field != bad.field {
			t.Errorf("%s: got %v", bad.field, err)
		}
	}
}

// writeReplayFile writes packets as a raw-IP pcap file, 10ms apart.
func writeReplayFile(t *testing.T, pkts ...[]byte) string {
	t.Helper()
	var buf bytes.Buffer
	w, err := pcapfile.NewWriter(&buf, pcapfile.LinkRaw)
	if err != nil {
		t.Fatal(err)
	}
	base := time.Now().Add(-time.Hour).UnixNano() // any time: only the intervals count
	for i, p := range pkts {
		w.Write(base+int64(i)*int64(10*time.Millisecond), p, len(p))
	}
	path := filepath.Join(t.TempDir(), "in.pcap")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestRunReplay replays a file of one accepted connection through the
// engine, connected over loopback to an agent: the client's SYN goes to
// the shadow; the shadow's SYN-ACK, relayed, is ACKed; the client's
// request then goes, once prod's ACK in the file vouches for it; the
// summary counts the session and the request. A bad file fails before
// anything is sent.
func TestRunReplay(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	var agentLog, replayLog lockedBuffer
	agentSrc, agentOut, listening := capturetest.New(16), &recordingSender{}, make(chan string, 1)
	acfg := validAgent()
	agentCtx, stopAgent := context.WithCancel(context.Background())
	defer stopAgent()
	agentErr := make(chan error, 1)
	go func() {
		agentErr <- runAgent(agentCtx, acfg, slog.New(slog.NewTextHandler(&agentLog, nil)), nil, testHost(agentSrc, nil, agentOut, listening))
	}()
	var addr string
	select {
	case addr = <-listening:
	case err := <-agentErr:
		t.Fatalf("agent: %v\n%s", err, agentLog.String())
	}

	prodAddr := netip.MustParseAddrPort("198.18.0.1:80")
	req := []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	file := writeReplayFile(t,
		segment(t, rewrite.Segment{Src: client, Dst: prodAddr, Seq: 1000, Flags: rewrite.FlagSYN, Window: 64240}),
		segment(t, rewrite.Segment{Src: prodAddr, Dst: client, Seq: 7000, Ack: 1001, Flags: rewrite.FlagSYN | rewrite.FlagACK, Window: 64240}),
		segment(t, rewrite.Segment{Src: client, Dst: prodAddr, Seq: 1001, Ack: 7001, Flags: rewrite.FlagACK, Window: 64240}),
		segment(t, rewrite.Segment{Src: client, Dst: prodAddr, Seq: 1001, Ack: 7001, Flags: rewrite.FlagACK | rewrite.FlagPSH, Window: 64240, Payload: req}),
		segment(t, rewrite.Segment{Src: prodAddr, Dst: client, Seq: 7001, Ack: 1001 + uint32(len(req)), Flags: rewrite.FlagACK, Window: 64240}),
	)
	sent := &recordingSender{}
	rcfg := validReplay(file)
	rcfg.Copy.Client.Addr, rcfg.Copy.Client.Secret, rcfg.Copy.MaxCPU = addr, acfg.Agent.Secret, 1
	rcfg.Copy.Compare.DivergenceLog = ""
	rcfg.Speed, rcfg.Settle = 4, 2*time.Second // the test answers the SYN within this, even on a loaded machine
	done := make(chan error, 1)
	var summary string
	go func() {
		pr, err := runReplay(context.Background(), rcfg, slog.New(slog.NewTextHandler(&replayLog, nil)), testHost(nil, nil, sent, nil))
		summary = pr.Summary()
		done <- err
	}()
	waitFor(t, "SYN sent to the shadow", 10*time.Second, func() bool { return len(sent.sent(t)) >= 1 })
	syn := sent.sent(t)[0]
	if syn.TCP().Flags() != rewrite.FlagSYN || netip.AddrPortFrom(syn.DstAddr(), syn.TCP().DstPort()) != shadow {
		t.Fatalf("first packet flags %#x to %v, want the SYN to the shadow", syn.TCP().Flags(), syn.DstAddr())
	}
	agentSrc.Push(segment(t, rewrite.Segment{
		Src: shadow, Dst: client, Seq: 5000, Ack: syn.TCP().Seq() + 1, Flags: rewrite.FlagSYN | rewrite.FlagACK, Window: 64240,
	}), time.Now())
	waitFor(t, "the request sent to the shadow", 10*time.Second, func() bool {
		for _, p := range sent.sent(t) {
			if bytes.Equal(p.Payload(), req) {
				return true
			}
		}
		return false
	})
	if err := <-done; err != nil {
		t.Fatalf("replay: %v\n%s", err, replayLog.String())
	}
	for _, want := range []string{"1 sessions", "1 requests", "asked 4x"} {
		if !strings.Contains(summary, want) {
			t.Errorf("summary lacks %q:\n%s", want, summary)
		}
	}

	// A file that is not a capture: an error naming it, nothing sent.
	bad := filepath.Join(t.TempDir(), "bad.pcap")
	os.WriteFile(bad, []byte("garbage, not a capture"), 0o600)
	n := len(sent.sent(t))
	rcfg.Files = []string{file, bad}
	_, err := runReplay(context.Background(), rcfg, slog.New(slog.DiscardHandler), testHost(nil, nil, sent, nil))
	var fe *pcapfile.FormatError
	if !errors.As(err, &fe) || fe.File != bad || fe.Offset != 0 {
		t.Errorf("bad file: %v, want a format error of %s at offset 0", err, bad)
	}
	if len(sent.sent(t)) != n {
		t.Errorf("a failed replay sent %d packets", len(sent.sent(t))-n)
	}
	stopAgent()
	<-agentErr
}

func TestHasPayload(t *testing.T) {
	for _, c := range []struct {
		seg  rewrite.Segment
		want bool
	}{
		{rewrite.Segment{Src: client, Dst: shadow, Flags: rewrite.FlagSYN}, false},
		{rewrite.Segment{Src: client, Dst: shadow, Flags: rewrite.FlagACK, Payload: []byte("x")}, true},
		{rewrite.Segment{Src: netip.MustParseAddrPort("[2001:2::1]:1"), Dst: netip.MustParseAddrPort("[2001:2::2]:2"), Flags: rewrite.FlagACK}, false},
		{rewrite.Segment{Src: netip.MustParseAddrPort("[2001:2::1]:1"), Dst: netip.MustParseAddrPort("[2001:2::2]:2"), Flags: rewrite.FlagACK, Payload: []byte("xy")}, true},
	} {
		if got := hasPayload(segment(t, c.seg)); got != c.want {
			t.Errorf("%+v: %v", c.seg, got)
		}
	}
	if hasPayload([]byte{0x45}) || hasPayload(nil) {
		t.Error("a runt has a payload")
	}
}
