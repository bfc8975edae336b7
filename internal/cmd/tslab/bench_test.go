package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBenchSmoke runs `tslab bench --smoke` in-process: both shapes at
// 500/s for 2 s through a real copier. The report must have a row for the
// smoke step of each shape whose copy ratio is 100% (no timing asserts),
// a step with and one without comparison, both copied whole and only one
// compared, each replay of the recorded step must serve every recorded
// request, and the lab must be gone afterwards.
func TestBenchSmoke(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("bench: needs root to create network namespaces (run the tests as root)")
	}
	if _, err := os.Stat(defaultNginx); err != nil {
		t.Skipf("bench: needs nginx-light (%v)", err)
	}
	bin := buildTcpshadow(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfg := &benchConfig{bin: bin, nginx: defaultNginx, step: 2 * time.Second, smoke: true,
		series: smokeSeries(), out: filepath.Join(t.TempDir(), "BENCHMARKS.md"),
		compareRate: 500, compareRuns: 1, replayRate: 500, replaySpeeds: []float64{1, 4}, multiplyRate: 500}
	var out bytes.Buffer
	res, err := runBench(ctx, cfg, &out)
	t.Logf("bench output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	if left := labLeftovers(t, res.labName); len(left) > 0 {
		t.Errorf("namespaces left after the bench: %v", left)
	}
	md, err := os.ReadFile(cfg.out)
	if err != nil {
		t.Fatal(err)
	}
	rows := stepRows(string(md), "500")
	if len(rows) != len(smokeSeries()) {
		t.Fatalf("report has %d rows for the 500/s step, want %d:\n%s", len(rows), len(smokeSeries()), md)
	}
	for _, row := range rows {
		// offered | alone | latency | with copier | latency | copied | ...
		if len(row) < 6 || row[5] != "100%" {
			t.Errorf("smoke step row %q: copied column is not 100%%", strings.Join(row, " | "))
		}
	}
	// With and without comparison: both copied whole, only one compared.
	if c := res.compare; c == nil || len(c.on) != 1 || len(c.off) != 1 {
		t.Fatalf("no steps with and without comparison: %+v", c)
	} else {
		for _, r := range []*stepResult{c.on[0], c.off[0]} {
			if r.prod == 0 || r.copiedN() != r.prod {
				t.Errorf("comparison cost step: shadow served %d of prod's %d", r.copiedN(), r.prod)
			}
		}
		if on, off := ev(c.on[0].copyDelta, "compare_pairs"), ev(c.off[0].copyDelta, "compare_pairs"); on == 0 || off != 0 {
			t.Errorf("pairs compared with comparison %.0f, without %.0f: want some and none", on, off)
		}
		if !strings.Contains(string(md), "## The cost of comparison") {
			t.Error("report has no section on the cost of comparison")
		}
	}
	if m := res.multiply; m == nil || m.one == nil || m.many == nil || !strings.Contains(string(md), "## The cost of a copy") {
		t.Error("no --multiply steps, or no section on them")
	} else if m.many.shadow < multiplyFactor*m.many.prod*99/100 {
		t.Errorf("at --multiply %d the shadow served %d for prod's %d", multiplyFactor, m.many.shadow, m.many.prod)
	}
	if len(res.replay) != 2 || !strings.Contains(string(md), "## Replay") {
		t.Fatalf("%d replays, want 2, and their table", len(res.replay))
	}
	for _, r := range res.replay {
		if r.recorded == 0 || r.served != r.recorded {
			t.Errorf("replay at %gx: the shadow served %d of the %d recorded requests", r.speed, r.served, r.recorded)
		}
	}
	for _, s := range res.series {
		if len(s.copied) != 1 || s.copied[0].prod == 0 {
			t.Fatalf("%s: no step with copier, or prod served nothing", s.title())
		}
		if c := s.copied[0]; c.copiedN() != c.prod {
			t.Errorf("%s: shadow served %d of prod's %d", s.title(), c.copiedN(), c.prod)
		}
	}
}

// stepRows returns the cells of the markdown table rows (in the per-series
// tables) whose first cell is offered.
func stepRows(md, offered string) [][]string {
	var rows [][]string
	inMain := false
	for _, line := range strings.Split(md, "\n") {
		if strings.HasPrefix(line, "| offered ") {
			inMain = strings.Contains(line, "prod alone: answered")
			continue
		}
		if !inMain || !strings.HasPrefix(line, "| "+offered+" |") {
			continue
		}
		var cells []string
		for _, c := range strings.Split(strings.Trim(line, "|"), "|") {
			cells = append(cells, strings.TrimSpace(c))
		}
		rows = append(rows, cells)
	}
	return rows
}

func TestParseRates(t *testing.T) {
	got, err := parseRates("1000, 5k,max")
	if err != nil || len(got) != 3 || got[0] != 1000 || got[1] != 5000 || got[2] != 0 {
		t.Errorf("parseRates = %v, %v; want [1000 5000 0]", got, err)
	}
	if got, err := parseRates(" "); err != nil || len(got) != 0 {
		t.Errorf("parseRates(blank) = %v, %v; want none: the shape is skipped", got, err)
	}
	for _, bad := range []string{"0", "-5", "fast", "1000000", "1000,,max"} {
		if _, err := parseRates(bad); err == nil {
			t.Errorf("parseRates(%q) accepted", bad)
		}
	}
}

func TestClientAddrs(t *testing.T) {
	a := clientAddrs(maxClientAddrs)
	if len(a) != 32 || a[0].String() != "198.18.0.2" || a[1].String() != "198.18.0.3" || a[31].String() != "198.18.0.33" {
		t.Errorf("clientAddrs(32) = %v … %v", a[:2], a[len(a)-1])
	}
}

func TestRatio(t *testing.T) {
	for _, c := range []struct {
		part, whole int
		want        string
	}{
		{5, 5, "100%"},
		{99999, 100000, "99.99%"}, // never rounds up to 100%
		{9990, 10000, "99.9%"},
		{0, 7, "0%"},
		{1, 0, "–"},
	} {
		if got := ratio(c.part, c.whole); got != c.want {
			t.Errorf("ratio(%d, %d) = %q, want %q", c.part, c.whole, got, c.want)
		}
	}
}

// TestLogTally feeds an access log in pieces, a line split across two
// updates, and checks the counts by step.
func TestLogTally(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.log")
	tl := newLogTally(path)
	if err := tl.update(); err != nil { // no log yet
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	write := func(s string) {
		t.Helper()
		if _, err := f.WriteString(s); err != nil {
			t.Fatal(err)
		}
		if err := tl.update(); err != nil {
			t.Fatal(err)
		}
	}
	write(`198.18.0.2 "GET /b1/1 HTTP/1.1" 200 75` + "\n" + `198.19.3.4 "GET /b1/2 HTTP/1.1" 200 75` + "\n" + `198.18.0.2 "GET /b2`)
	write(`/7 HTTP/1.1" 200 75` + "\n" + `198.18.0.2 "\x16\x03" 400 0` + "\n" + `198.18.0.2 "GET /idle HTTP/1.1" 200 40` + "\n")
	want := map[string]int{"b1": 2, "b2": 1, "": 1, "idle": 1}
	for k, v := range want {
		if tl.counts[k] != v {
			t.Errorf("count[%q] = %d, want %d (all: %v)", k, tl.counts[k], v, tl.counts)
		}
	}
}

// TestPace checks the open loop: exactly rate × duration tokens, those
// that find the backlog full counted as missed, never queued.
func TestPace(t *testing.T) {
	start := time.Now()
	deadline := start.Add(50 * time.Millisecond)
	for _, backlog := range []int{1000, 10} {
		tokens := make(chan struct{}, backlog)
		missed := pace(context.Background(), tokens, 2000, start, deadline)
		got := 0
		for range tokens {
			got++
		}
		if got+missed != 100 {
			t.Errorf("backlog %d: %d tokens + %d missed, want 100 in all", backlog, got, missed)
		}
		if got > backlog {
			t.Errorf("backlog %d: %d tokens queued", backlog, got)
		}
		if backlog >= 100 && missed != 0 {
			t.Errorf("backlog %d: %d missed with room for all", backlog, missed)
		}
	}
}

// TestReadResponse drives the load generator's HTTP reader over an
// in-memory pipe.
func TestReadResponse(t *testing.T) {
	for _, tc := range []struct {
		name     string
		response string
		keep     bool
		ok       bool
	}{
		{"keep-alive", "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 16\r\nConnection: keep-alive\r\n\r\nhello from prod\n", true, true},
		{"server closes", "HTTP/1.1 200 OK\r\nContent-Length: 16\r\nConnection: close\r\n\r\nhello from prod\n", false, true},
		{"shadow's body", "HTTP/1.1 200 OK\r\nContent-Length: 18\r\n\r\nhello from shadow\n", true, false},
		{"not 200", "HTTP/1.1 404 Not Found\r\nContent-Length: 16\r\n\r\nhello from prod\n", true, false},
		{"no length", "HTTP/1.1 200 OK\r\n\r\nhello from prod\n", true, false},
		{"cut short", "HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\nhello", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, server := net.Pipe()
			defer client.Close()
			go func() {
				defer server.Close()
				br := bufio.NewReader(server)
				for { // the request, to its blank line
					line, err := br.ReadString('\n')
					if err != nil || line == "\r\n" {
						break
					}
				}
				io.WriteString(server, tc.response)
			}()
			g := &loadWorker{spec: &loadSpec{prefix: "/b1", want: prodBody}, conn: client, br: bufio.NewReader(client)}
			keep, err := g.roundTrip(1, false)
			if (err == nil) != tc.ok {
				t.Fatalf("roundTrip error %v, want ok=%v", err, tc.ok)
			}
			if err == nil && keep != tc.keep {
				t.Errorf("keep = %v, want %v", keep, tc.keep)
			}
		})
	}
}

// TestBenchModesSmoke runs the deployment modes alone, smoke-sized: each
// mode's keep-alive step copies 100% and its bulk upload reaches the
// shadow whole; through the tunnel the switch dropped no forged frame;
// the report has one row per mode, and no lab is left.
func TestBenchModesSmoke(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("bench: needs root to create network namespaces (run the tests as root)")
	}
	if _, err := os.Stat(defaultNginx); err != nil {
		t.Skipf("bench: needs nginx-light (%v)", err)
	}
	bin := buildTcpshadow(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfg := &benchConfig{bin: bin, nginx: defaultNginx, step: 2 * time.Second, smoke: true,
		modes: allModes, modeRate: 500, modeBulk: []int64{200e6}, out: filepath.Join(t.TempDir(), "modes.md")}
	var out bytes.Buffer
	res, err := runBench(ctx, cfg, &out)
	t.Logf("bench output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	if len(res.modes) != len(allModes) {
		t.Fatalf("%d modes measured, want %d", len(res.modes), len(allModes))
	}
	for _, r := range res.modes {
		if k := r.keepAlive; k.prod == 0 || k.copiedN() != k.prod {
			t.Errorf("%s: the shadow served %d of prod's %d", r.mode, k.copiedN(), k.prod)
		}
		if len(r.bulk) != 1 {
			t.Fatalf("%s: %d bulk steps, want 1", r.mode, len(r.bulk))
		}
		if u := r.bulk[0]; u.prod == 0 || u.shadow < u.prod {
			t.Errorf("%s: the shadow read %d of prod's %d bulk bytes", r.mode, u.shadow, u.prod)
		}
		if r.mode == modeTunnel && r.spoofed != 0 {
			t.Errorf("tunnel: the switch dropped %d forged frames", r.spoofed)
		}
	}
	md, err := os.ReadFile(cfg.out)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range allModes {
		if !strings.Contains(string(md), "| "+m+" | ") {
			t.Errorf("the report has no row for %s:\n%s", m, md)
		}
	}
}
