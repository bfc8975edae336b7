package daemon

import (
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/pcapdump"
)

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
