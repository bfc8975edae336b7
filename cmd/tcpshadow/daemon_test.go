package main

import (
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/gopacket/pcapgo"
	"github.com/spf13/pflag"

	"github.com/tcpshadow/tcpshadow/internal/logfile"
	"github.com/tcpshadow/tcpshadow/internal/pcapdump"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// daemonOptionsFrom reads the flags both daemons share from f.
func daemonOptionsFrom(t *testing.T, f *pflag.FlagSet) daemonOptions {
	t.Helper()
	return daemonOptions{
		configFile: flagValue(t, f.GetString, "config"),
		logFile:    flagValue(t, f.GetString, "log-file"),
		dump: dumpOptions{
			path:  flagValue(t, f.GetString, "dump"),
			maxMB: flagValue(t, f.GetInt, "dump-max-mb"),
			files: flagValue(t, f.GetInt, "dump-files"),
		},
	}
}

// synTo builds a SYN from 198.19.0.1:port to the shadow.
func synTo(t *testing.T, port uint16) []byte {
	t.Helper()
	seg := rewrite.Segment{
		Src: netip.AddrPortFrom(netip.MustParseAddr("198.19.0.1"), port), Dst: netip.MustParseAddrPort("198.18.1.2:80"),
		Seq: 1, Flags: rewrite.FlagSYN, Window: 1000,
	}
	b := make([]byte, seg.Len())
	if _, err := seg.Put(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// pcapPorts returns the TCP source ports of the packets in a pcap file.
func pcapPorts(t *testing.T, path string) []uint16 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var ports []uint16
	for {
		data, _, err := r.ReadPacketData()
		if err == io.EOF {
			return ports
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		var p rewrite.Packet
		if err := p.DecodeHeader(data); err != nil {
			t.Fatal(err)
		}
		ports = append(ports, p.TCP().SrcPort())
	}
}

func TestDumpOptions(t *testing.T) {
	dir := t.TempDir()
	o := copyOptionsFrom(t, "-i", "eth0", "-x", "80-198.18.1.2:80", "-s", "198.18.1.3")
	cfg, err := o.config()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.dump != nil || cfg.logFile != "" {
		t.Errorf("dump %+v, log file %q: want both off by default", cfg.dump, cfg.logFile)
	}
	o = copyOptionsFrom(t, "-i", "eth0", "-x", "80-198.18.1.2:80", "-s", "198.18.1.3",
		"--dump", filepath.Join(dir, "c.pcap"), "--dump-max-mb", "7", "--dump-files", "2", "--log-file", filepath.Join(dir, "c.log"))
	if cfg, err = o.config(); err != nil {
		t.Fatal(err)
	}
	want := pcapdump.Config{Path: filepath.Join(dir, "c.pcap"), MaxBytes: 7 << 20, Files: 2}
	if cfg.dump == nil || *cfg.dump != want || cfg.logFile != filepath.Join(dir, "c.log") {
		t.Errorf("dump %+v, log file %q", cfg.dump, cfg.logFile)
	}
	icfg, err := interceptOptionsFrom(t, "-i", "eth0", "--dump", filepath.Join(dir, "a.pcap")).config()
	if err != nil || icfg.dump == nil || icfg.dump.MaxBytes != 100<<20 || icfg.dump.Files != 5 {
		t.Errorf("intercept dump %+v, %v: want the defaults 100 MiB and 5 files", icfg.dump, err)
	}
}

// TestDumpSamples checks a dump's counters are exported, and none
// without a dump. (Its sender wrapper is tested in internal/pcapdump.)
func TestDumpSamples(t *testing.T) {
	path := filepath.Join(t.TempDir(), "copy.pcap")
	d, err := pcapdump.Open(pcapdump.Config{Path: path}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 150 {
		d.WriteIP(time.Now(), synTo(t, uint16(i)))
	}
	d.Close()
	if s := dumpSamples(d); len(s) != 4 || s[0].Name != "tcpshadow_dump_packets_total" || s[0].Value != 150 {
		t.Errorf("samples %+v", s)
	}
	if dumpSamples(nil) != nil {
		t.Error("samples without a dump")
	}
}

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

// TestLogFileKeepsTime checks that under systemd (JOURNAL_STREAM set)
// timestamps are left out on standard error, which the journal stamps,
// but kept in a --log-file, which nothing else stamps.
func TestLogFileKeepsTime(t *testing.T) {
	t.Setenv("JOURNAL_STREAM", "8:1234")
	var stderr strings.Builder
	g := &globalOptions{logFormat: "text", logLevel: "info"}
	path := filepath.Join(t.TempDir(), "copy.log")
	for _, p := range []string{"", path} {
		lf, log, err := g.openLog(p, &stderr, origin{})
		if err != nil {
			t.Fatal(err)
		}
		log.Info("hello")
		lf.Close()
	}
	if strings.Contains(stderr.String(), "time=") || !strings.Contains(stderr.String(), "msg=hello") {
		t.Errorf("standard error under systemd: %q, want no time", stderr.String())
	}
	b, _ := os.ReadFile(path)
	if !strings.HasPrefix(string(b), "time=") || !strings.Contains(string(b), "msg=hello") {
		t.Errorf("log file under systemd: %q, want a time", b)
	}
}
