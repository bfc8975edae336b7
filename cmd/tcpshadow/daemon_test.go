package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tcpshadow/tcpshadow/internal/pcapdump"
)

func TestDumpOptions(t *testing.T) {
	dir := t.TempDir()
	o := copyOptionsFrom(t, "-i", "eth0", "-x", "80-198.18.1.2:80", "-s", "198.18.1.3")
	cfg, err := o.config()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Dump.Path != "" || cfg.logFile != "" {
		t.Errorf("dump %+v, log file %q: want both off by default", cfg.Dump, cfg.logFile)
	}
	o = copyOptionsFrom(t, "-i", "eth0", "-x", "80-198.18.1.2:80", "-s", "198.18.1.3",
		"--dump", filepath.Join(dir, "c.pcap"), "--dump-max-mb", "7", "--dump-files", "2", "--log-file", filepath.Join(dir, "c.log"))
	if cfg, err = o.config(); err != nil {
		t.Fatal(err)
	}
	want := pcapdump.Config{Path: filepath.Join(dir, "c.pcap"), MaxBytes: 7 << 20, Files: 2}
	if cfg.Dump != want || cfg.logFile != filepath.Join(dir, "c.log") {
		t.Errorf("dump %+v, log file %q", cfg.Dump, cfg.logFile)
	}
	icfg, err := interceptOptionsFrom(t, "-i", "eth0", "--insecure-no-auth", "--dump", filepath.Join(dir, "a.pcap")).config()
	if err != nil || icfg.Dump.Path == "" || icfg.Dump.MaxBytes != 100<<20 || icfg.Dump.Files != 5 {
		t.Errorf("intercept dump %+v, %v: want the defaults 100 MiB and 5 files", icfg.Dump, err)
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
