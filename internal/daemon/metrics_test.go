package daemon

import (
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/capture/capturetest"
	"github.com/tcpshadow/tcpshadow/intercept"
	"github.com/tcpshadow/tcpshadow/internal/metrics"
	"github.com/tcpshadow/tcpshadow/internal/pcapdump"
	"github.com/tcpshadow/tcpshadow/tcpstate"
)

type nopSender struct{}

func (nopSender) Send([]byte) error { return nil }

// TestSampleNames checks what each daemon counts is exported under a
// unique name, the counters once invisible included.
func TestSampleNames(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	src := capturetest.New(1)
	client := intercept.NewClient(intercept.ClientConfig{Addr: "198.18.1.3:36524"}, func([]byte) {}, log)
	c := validCopy()
	eng, err := tcpstate.NewEngine(c.EngineConfig(), []tcpstate.Sender{nopSender{}}, client, log)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		samples []metrics.Sample
		want    []string
	}{
		{CopySamples(eng, client, src, src), []string{
			"tcpshadow_agent_disconnects_total", "tcpshadow_agent_reply_frames_total",
			"tcpshadow_capture_kernel_received_total", "tcpshadow_capture_non_ip_total",
		}},
		{AgentSamples(intercept.NewAgent(intercept.AgentConfig{InsecureNoAuth: true}, src, nil, log), src), []string{
			"tcpshadow_intercept_kernel_received_total", "tcpshadow_intercept_kernel_dropped_total",
			"tcpshadow_intercept_interface_dropped_total", "tcpshadow_intercept_non_ip_total",
		}},
	} {
		seen := make(map[string]bool)
		for _, s := range tt.samples {
			key := s.Name
			if len(s.Labels) == 2 {
				key += "{" + s.Labels[1] + "}"
			}
			if seen[key] {
				t.Errorf("%s exported twice", key)
			}
			seen[key] = true
		}
		for _, w := range tt.want {
			if !seen[w] {
				t.Errorf("%s not exported", w)
			}
		}
	}
}

// TestDumpSamples checks a dump's counters are exported, and none
// without a dump.
func TestDumpSamples(t *testing.T) {
	d, err := pcapdump.Open(pcapdump.Config{Path: filepath.Join(t.TempDir(), "copy.pcap")}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 150 {
		d.WriteIP(time.Now(), synTo(t, uint16(i)))
	}
	d.Close()
	if s := DumpSamples(d); len(s) != 4 || s[0].Name != "tcpshadow_dump_packets_total" || s[0].Value != 150 {
		t.Errorf("samples %+v", s)
	}
	if DumpSamples(nil) != nil {
		t.Error("samples without a dump")
	}
}
