package daemon

import (
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/logfile"
	"github.com/tcpshadow/tcpshadow/internal/pcapdump"
	"github.com/tcpshadow/tcpshadow/rewrite"
	"github.com/tcpshadow/tcpshadow/tcpstate"
)

// TestHangupReopens moves the log and the dump away as logrotate does,
// raises a real SIGHUP and checks the daemon's handler reopens both, then
// re-reads the controls.
func TestHangupReopens(t *testing.T) {
	dir := t.TempDir()
	logPath, dumpPath := filepath.Join(dir, "copy.log"), filepath.Join(dir, "copy.pcap")
	lf, err := logfile.Open(logPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	log := slog.New(slog.NewTextHandler(lf, nil))
	d, err := pcapdump.Open(pcapdump.Config{Path: dumpPath}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var reloads atomic.Int32
	stop := reopenOnHangup(log, lf, d, func() { reloads.Add(1) })
	stopped := false
	defer func() {
		if !stopped {
			stop()
		}
	}()

	log.Info("before rotation")
	d.WriteIP(time.Now(), synTo(t, 1))
	for _, p := range []string{logPath, dumpPath} {
		if err := os.Rename(p, p+".1"); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(logPath)
		if strings.Contains(string(b), "reopened on SIGHUP") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no reopen logged to a new %s within 10s", logPath)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for reloads.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // the controls are re-read after the reopening
	}
	if n := reloads.Load(); n != 1 {
		t.Errorf("SIGHUP re-read the controls %d times, want 1", n)
	}
	d.WriteIP(time.Now(), synTo(t, 2))
	stop()
	stopped = true
	d.Close()
	if got := pcapPorts(t, dumpPath+".1"); len(got) != 1 || got[0] != 1 {
		t.Errorf("moved dump: ports %v, want [1]", got)
	}
	if got := pcapPorts(t, dumpPath); len(got) != 1 || got[0] != 2 {
		t.Errorf("new dump: ports %v, want [2]", got)
	}
	b, _ := os.ReadFile(logPath + ".1")
	if !strings.Contains(string(b), "before rotation") || strings.Contains(string(b), "reopened") {
		t.Errorf("moved log:\n%s", b)
	}
}

type nopRegistrar struct{}

func (nopRegistrar) Register(rewrite.Tuple)   {}
func (nopRegistrar) Deregister(rewrite.Tuple) {}

// TestReloadControls checks what SIGHUP does with the re-read controls:
// applied to the engine and exported; a failed re-read or a bad value
// keeps those in effect.
func TestReloadControls(t *testing.T) {
	cfg := tcpstate.Config{Maps: []tcpstate.Map{{Local: netip.MustParseAddrPort("198.18.0.1:80"), Target: netip.MustParseAddrPort("198.18.1.2:80")}}}
	eng, err := tcpstate.NewEngine(cfg, []tcpstate.Sender{nopSender{}}, nopRegistrar{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var logged strings.Builder
	log := slog.New(slog.NewTextHandler(&logged, nil))
	want := tcpstate.Controls{Sample: 0.3, Multiply: 4, MaxNewSessions: 100}
	reloadControls(func() (tcpstate.Controls, error) { return want, nil }, eng, log)
	if got, share := eng.ControlsNow(); got != want || share != 0.3 {
		t.Errorf("controls %+v share %v, want %+v at 0.3", got, share, want)
	}
	values := map[string]float64{}
	for _, s := range ControlSamples(eng) {
		values[s.Labels[1]] = s.Value
	}
	if values["sample"] != 0.3 || values["multiply"] != 4 || values["max_new_sessions"] != 100 || values["share_now"] != 0.3 {
		t.Errorf("exported %v", values)
	}
	reloadControls(func() (tcpstate.Controls, error) { return tcpstate.Controls{}, errors.New("copy.sample: bad") }, eng, log)
	reloadControls(func() (tcpstate.Controls, error) { return tcpstate.Controls{Sample: 2}, nil }, eng, log)
	if got, _ := eng.ControlsNow(); got != want {
		t.Errorf("after failed re-reads: %+v, want %+v kept", got, want)
	}
	if n := strings.Count(logged.String(), "keeping those in effect"); n != 2 {
		t.Errorf("%d failures logged, want 2:\n%s", n, logged.String())
	}
	reloadControls(nil, eng, log) // no config file: nothing
}
