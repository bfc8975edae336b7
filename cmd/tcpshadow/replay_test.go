package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// replayConfigFrom parses args with the replay command's flags and
// returns the configuration it would run, or the error.
func replayConfigFrom(t testing.TB, files []string, args ...string) (*replayOptions, error) {
	t.Helper()
	o := &replayOptions{}
	parseFlags(t, newReplayCmdWith(&globalOptions{}, o), args)
	_, err := o.config(files, nil, false)
	return o, err
}

var replayBase = []string{"--map", "80-198.18.1.2:80", "--intercept", "198.18.1.3"}

// TestReplayFlagsAreCopys: the copy flags a replay takes exist on copy,
// every load-test control copy has is a replay's too, and the capture's
// flags are not a replay's.
func TestReplayFlagsAreCopys(t *testing.T) {
	copyFlags := newCopyCmdWith(&globalOptions{}, &copyOptions{}).Flags()
	replayFlags := newReplayCmdWith(&globalOptions{}, &replayOptions{}).Flags()
	for _, name := range replayCopyFlags {
		if copyFlags.Lookup(name) == nil {
			t.Errorf("copy has no --%s any more", name)
		}
	}
	for _, name := range replayOptionalFlags {
		if (copyFlags.Lookup(name) != nil) != (replayFlags.Lookup(name) != nil) {
			t.Errorf("--%s: on copy %v, on replay %v", name, copyFlags.Lookup(name) != nil, replayFlags.Lookup(name) != nil)
		}
	}
	for _, name := range []string{"iface", "capture", "filter", "snaplen", "record", "config"} {
		if replayFlags.Lookup(name) != nil {
			t.Errorf("replay has --%s", name)
		}
	}
}

func TestReplayConfig(t *testing.T) {
	files := []string{"a.pcap", "dir"}
	o, err := replayConfigFrom(t, files, append(replayBase, "--speed", "2.5", "--loop", "3", "--linger", "3s", "--workers", "2")...)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := o.config(files, &bytes.Buffer{}, true)
	if err != nil {
		t.Fatal(err)
	}
	e := cfg.Copy.EngineConfig()
	if cfg.Speed != 2.5 || cfg.Loop != 3 || len(cfg.Files) != 2 || e.Linger != 3*time.Second || e.Workers != 2 ||
		len(e.Maps) != 1 || e.Maps[0].Target.Port() != 80 || cfg.Copy.Capture.Interface != "" || !cfg.Terminal {
		t.Errorf("config %+v engine %+v", cfg, e)
	}
	o.noProgress = true
	if cfg, _ := o.config(files, &bytes.Buffer{}, true); cfg.Progress != nil {
		t.Error("--no-progress still writes progress")
	}
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--speed", "0"}, "--speed 0: want more than 0 and at most 1000"},
		{[]string{"--speed", "2000"}, "--speed 2000"},
		{[]string{"--loop", "0"}, "--loop 0: want 1..255"},
		{[]string{"--linger", "-1s"}, "--linger"},
	} {
		if _, err := replayConfigFrom(t, files, append(replayBase, c.args...)...); err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%v: %v, want %q", c.args, err, c.msg)
		}
	}
	if _, err := replayConfigFrom(t, files, "--intercept", "198.18.1.3"); err == nil || !strings.Contains(err.Error(), "--map is required") {
		t.Errorf("without --map: %v", err)
	}
}

func TestCopyRecordFlags(t *testing.T) {
	dir := t.TempDir()
	o := copyOptionsFrom(t, append(copyBase, "--map", "80-198.18.1.2:80", "--record", dir, "--record-size", "8MiB", "--record-age", "1m", "--record-files", "4")...)
	cfg, err := o.config()
	if err != nil {
		t.Fatal(err)
	}
	if r := cfg.Record; r.Dir != dir || r.MaxBytes != 8<<20 || r.MaxAge != time.Minute || r.MaxFiles != 4 {
		t.Errorf("record %+v", r)
	}
	file := filepath.Join(dir, "f")
	os.WriteFile(file, nil, 0o600)
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--record-size", "1KiB"}, `--record-size "1KiB": want a size of 1MiB..1TiB`},
		{[]string{"--record-size", "lots"}, `--record-size "lots"`},
		{[]string{"--record-age", "10ms"}, "--record-age 10ms: want at least 1s"},
		{[]string{"--record-files", "0"}, "--record-files 0"},
		{[]string{"--record", file}, "not one"},
		{[]string{"--record", filepath.Join(dir, "missing")}, "want an existing directory"},
	} {
		_, err := copyOptionsFrom(t, append(append(copyBase, "--map", "80-198.18.1.2:80"), c.args...)...).config()
		if err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%v: %v, want %q", c.args, err, c.msg)
		}
	}
}
