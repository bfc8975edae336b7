package daemon

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/logfile"
	"github.com/tcpshadow/tcpshadow/internal/pcapdump"
)

// TestHangupReopens moves the log and the dump away as logrotate does,
// raises a real SIGHUP and checks the daemon's handler reopens both.
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
	stop := reopenOnHangup(log, lf, d)
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
