package main

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/tcpstate"
)

// TestCopyControlsFlags checks the load-test flags reach the engine's
// controls, and bad values are named as the flag.
func TestCopyControlsFlags(t *testing.T) {
	p := writeConfig(t, copyFile)
	c, err := daemonFromFile(t, "copy", p, "--sample", "30%", "--sample-seed", "7", "--multiply", "20",
		"--ramp", "10s", "--max-new-sessions", "500")
	if err != nil {
		t.Fatal(err)
	}
	got := c.(*copyConfig).Engine.Controls
	want := tcpstate.Controls{Sample: 0.3, SampleSeed: 7, Multiply: 20, Ramp: 10 * time.Second, MaxNewSessions: 500}
	if got != want {
		t.Errorf("controls %+v, want %+v", got, want)
	}
	if c, _ := daemonFromFile(t, "copy", p, "--sample", "0.25"); c.(*copyConfig).Engine.Controls.Sample != 0.25 {
		t.Errorf("--sample 0.25: %v", c.(*copyConfig).Engine.Controls.Sample)
	}
	for _, args := range [][]string{
		{"--sample", "0%"}, {"--sample", "101%"}, {"--sample", "2"}, {"--sample", "x"},
		{"--multiply", "0"}, {"--multiply", "256"}, {"--ramp", "-1s"}, {"--max-new-sessions", "-1"},
	} {
		_, err := daemonFromFile(t, "copy", p, args...)
		if err == nil || !strings.Contains(err.Error(), args[0]) {
			t.Errorf("%v: error %v, want one naming %s", args, err, args[0])
		}
	}
	bad := writeConfig(t, copyFile+"multiply = 300\n")
	if _, err := daemonFromFile(t, "copy", bad); err == nil || !strings.Contains(err.Error(), "copy.multiply") {
		t.Errorf("bad file value: error %v, want one naming copy.multiply", err)
	}
}

// TestMapSeveralTargets checks 80-A:80,B:80 makes one map per target,
// numbered for the flow hash, and what is refused.
func TestMapSeveralTargets(t *testing.T) {
	p := writeConfig(t, copyFile)
	c, err := daemonFromFile(t, "copy", p, "--map", "80-198.18.1.2:80,198.18.1.3:8080,198.18.1.4", "--map", "81-198.18.1.2:81")
	if err != nil {
		t.Fatal(err)
	}
	maps := c.(*copyConfig).Engine.Maps
	if len(maps) != 4 {
		t.Fatalf("maps %v, want 4", maps)
	}
	for i, want := range []string{"198.18.1.2:80", "198.18.1.3:8080", "198.18.1.4:80"} {
		m := maps[i]
		if m.Target.String() != want || m.Local.Port() != 80 || m.Share != uint8(i) || m.Of != 3 {
			t.Errorf("map %d: %+v, want target %s, share %d of 3", i, m, want, i)
		}
	}
	if m := maps[3]; m.Of > 1 || m.Target.String() != "198.18.1.2:81" {
		t.Errorf("the map after: %+v", m)
	}
	for _, bad := range []string{"80-198.18.1.2:80,[2001:2::2]:80", "198.18.1.3:80"} {
		if _, err := daemonFromFile(t, "copy", p, "--map", bad); err == nil || !strings.Contains(err.Error(), "--map") {
			t.Errorf("--map %s: error %v", bad, err)
		}
	}
}

// TestReloadRereadsTheControls checks SIGHUP's re-reading: the file's new
// controls, the command line's still winning.
func TestReloadRereadsTheControls(t *testing.T) {
	p := writeConfig(t, copyFile+"sample = \"10%\"\nmultiply = 2\n")
	cmd, _, opts := daemonCmd("copy")
	f := parseFlags(t, cmd, []string{"--config", p, "--max-new-sessions", "50"})
	from, err := applyConfigFile(f, "copy", p)
	if err != nil {
		t.Fatal(err)
	}
	o := opts.(*copyOptions)
	o.from = from
	cfg, err := o.config()
	if err != nil {
		t.Fatal(err)
	}
	if c := cfg.Engine.Controls; c.Sample != 0.1 || c.Multiply != 2 || c.MaxNewSessions != 50 {
		t.Fatalf("at the start: %+v", c)
	}
	reload := o.reloader(f)
	if err := os.WriteFile(p, []byte(copyFile+"sample = \"40%\"\nmultiply = 3\nramp = \"5s\"\nmax_new_sessions = 9\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := reload()
	if err != nil {
		t.Fatal(err)
	}
	if want := (tcpstate.Controls{Sample: 0.4, Multiply: 3, Ramp: 5 * time.Second, MaxNewSessions: 50}); c != want {
		t.Errorf("reloaded %+v, want %+v (the flag's cap kept)", c, want)
	}
	if err := os.WriteFile(p, []byte(copyFile+"sample = \"400%\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := reload(); err == nil || !strings.Contains(err.Error(), "copy.sample") {
		t.Errorf("a bad file: error %v, want one naming copy.sample", err)
	}
	if (&copyOptions{}).reloader(f) != nil {
		t.Error("a reloader without a config file")
	}
}

// FuzzParseMapsAndShare: the --map list and --sample parsers never panic;
// what they accept holds together (a map's targets numbered 0..Of-1 on
// one local endpoint; a share in (0, 1]).
func FuzzParseMapsAndShare(f *testing.F) {
	f.Add("80-198.18.1.2:80,198.18.1.3:80", "30%")
	f.Add("[2001:2::1]:80-[2001:2:0:1::2]:80,[2001:2:0:1::3]:81", "0.5")
	f.Add("80-198.18.1.2,81-198.18.1.3:8081,198.18.1.4", "100%")
	f.Fuzz(func(t *testing.T, maps, share string) {
		if v, err := parseShare(share); err == nil && (v <= 0 || v > 1) {
			t.Fatalf("parseShare(%q) = %v", share, v)
		}
		got, err := parseMaps(strings.Split(maps, ","), func(i int) string { return "--map" })
		if err != nil {
			return
		}
		for i, m := range got {
			if m.Of > 1 && (m.Share >= m.Of || got[i-int(m.Share)].Local != m.Local || got[i-int(m.Share)].Share != 0) {
				t.Fatalf("map %d of %q: %+v", i, maps, m)
			}
		}
	})
}
