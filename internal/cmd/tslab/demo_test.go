package main

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// buildTcpshadow builds the daemon the demo runs into t.TempDir().
func buildTcpshadow(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "tcpshadow")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/tcpshadow/tcpshadow/cmd/tcpshadow").CombinedOutput()
	if err != nil {
		t.Fatalf("build tcpshadow: %v\n%s", err, out)
	}
	return bin
}

// labLeftovers lists namespaces of the named lab still in /run/netns.
func labLeftovers(t *testing.T, labName string) []string {
	t.Helper()
	ents, err := os.ReadDir("/run/netns")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var left []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), labName+"-") {
			left = append(left, e.Name())
		}
	}
	return left
}

// checkTornDown asserts runDemo left no namespace and no nginx directory.
func checkTornDown(t *testing.T, res *demoResult) {
	t.Helper()
	if left := labLeftovers(t, res.labName); len(left) > 0 {
		t.Errorf("namespaces left after the demo: %v", left)
	}
	for _, d := range res.dirs {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("nginx directory %s left after the demo (stat: %v)", d, err)
		}
	}
}

// TestDemo runs the demo in-process: with a working copier it must report
// every request copied (scenarios 1, 7, 17, 18 between real nginx
// instances, IPv4 and IPv6), and with a copier that captures nothing it
// must say so and fail its verdict, so `make demo`'s exit status means
// something. Either way it must tear the lab down.
func TestDemo(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("demo: needs root to create network namespaces (run the tests as root)")
	}
	if _, err := os.Stat(defaultNginx); err != nil {
		t.Skipf("demo: needs nginx-light (%v)", err)
	}
	bin := buildTcpshadow(t)
	cfg := func() *demoConfig {
		return &demoConfig{bin: bin, nginx: defaultNginx, scale: 0.5,
			timeout: 60 * time.Second, catchUp: 30 * time.Second}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	t.Run("CopiesEverything", func(t *testing.T) {
		var out bytes.Buffer
		res, err := runDemo(ctx, cfg(), &out)
		t.Logf("demo output:\n%s", out.String())
		if err != nil {
			t.Fatal(err)
		}
		checkTornDown(t, res)
		if err := res.verdict(); err != nil {
			t.Fatal(err)
		}
		if res.planned == 0 || res.sent != res.planned || res.prod != res.planned ||
			res.shadow != res.prod || res.copied != res.prod {
			t.Fatalf("planned %d, answered %d, prod served %d, shadow %d, copied %d: want all equal",
				res.planned, res.sent, res.prod, res.shadow, res.copied)
		}
		for _, k := range res.kinds {
			if k.prod == 0 || k.copied != k.prod {
				t.Errorf("%s: prod served %d, %d copied", k.title, k.prod, k.copied)
			}
		}
		if len(res.sources) == 0 || len(res.outOfPool) > 0 {
			t.Errorf("shadow sources %v, outside the pools %v", res.sources, res.outOfPool)
		}
		if !strings.Contains(out.String(), "(copied 100%)") {
			t.Error(`report lacks "(copied 100%)"`)
		}
		// The comparison: the shadow answered every /cmp/fail/ prod
		// served with a 500, /cmp/slow/ is slower on the shadow, and the
		// report names both. (Not yet asserted: that each 500 is paired
		// with prod's 200; prod's side loses some answers to this client,
		// counted as prod timeouts: open in issue 11.)
		c := res.cmp
		if c == nil || c.err != nil {
			t.Fatalf("no comparison report: %+v", c)
		}
		if c.prodFail == 0 || c.shadow500 != uint64(c.prodFail) || c.failed == 0 || !c.failNamed {
			t.Errorf("prod served /cmp/fail/ %d times; the report counts %d shadow 500s, %d 200 → 500 (named: %v)", c.prodFail, c.shadow500, c.failed, c.failNamed)
		}
		if c.prodSlow == 0 || c.slower == 0 || !c.slowNamed {
			t.Errorf("prod served /cmp/slow/ %d times; the report counts %d slower (named: %v)", c.prodSlow, c.slower, c.slowNamed)
		}
	})

	t.Run("ReportsMissingCopies", func(t *testing.T) {
		c := cfg()
		c.scale = 0.1
		c.catchUp = 2 * time.Second
		// Replacing the capture filter with one matching none of the
		// traffic leaves the shadow without a single request.
		c.copyArgs = []string{"--filter", "tcp and dst port 81"}
		var out bytes.Buffer
		res, err := runDemo(ctx, c, &out)
		t.Logf("demo output:\n%s", out.String())
		if err != nil {
			t.Fatal(err)
		}
		checkTornDown(t, res)
		if res.prod != res.planned || res.shadow != 0 {
			t.Fatalf("prod served %d of %d, shadow %d: want all, none", res.prod, res.planned, res.shadow)
		}
		if err := res.verdict(); err == nil {
			t.Fatal("verdict passed with nothing copied")
		}
		if !strings.Contains(out.String(), "(copied 0%)") {
			t.Error(`report lacks "(copied 0%)"`)
		}
	})
}

func TestVerdict(t *testing.T) {
	ok := demoResult{planned: 10, sent: 10, prod: 10, shadow: 10, copied: 10}
	if err := ok.verdict(); err != nil {
		t.Fatalf("complete result: %v", err)
	}
	for name, mod := range map[string]func(*demoResult){
		"one not copied":     func(r *demoResult) { r.copied = 9 },
		"prod served none":   func(r *demoResult) { r.prod, r.shadow, r.copied = 0, 0, 0 },
		"request unanswered": func(r *demoResult) { r.sent = 9 },
		"source out of pool": func(r *demoResult) { r.outOfPool = []netip.Addr{netip.MustParseAddr("198.18.0.2")} },
		"shadow packet leak": func(r *demoResult) { r.leaks = 1 },
	} {
		r := ok
		mod(&r)
		if err := r.verdict(); err == nil {
			t.Errorf("%s: verdict passed", name)
		}
	}
}

func TestPct(t *testing.T) {
	for _, c := range []struct {
		part, whole int
		want        string
	}{
		{420, 420, "100%"},
		{1999, 2000, "99.9%"}, // never rounds up to 100%
		{0, 42, "0%"},
		{1, 3, "33.3%"},
		{0, 0, "-"},
	} {
		if got := pct(c.part, c.whole); got != c.want {
			t.Errorf("pct(%d, %d) = %q, want %q", c.part, c.whole, got, c.want)
		}
	}
}

func TestAccessLogParse(t *testing.T) {
	n := &nginx{name: "test", dir: t.TempDir()}
	lines := `198.19.1.2 "POST /upload/3 HTTP/1.1" 201 262300
2001:2:0:ff::1 "GET /ka6/0/1 HTTP/1.1" 200 75
198.18.0.2 "\x16\x03\x01" 400 0
`
	if err := os.WriteFile(n.accessLog(), []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := n.requests()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("got %d entries, want 3 (unparsed lines count too)", len(got))
	}
	want0 := logEntry{remote: netip.MustParseAddr("198.19.1.2"), method: "POST", path: "/upload/3", status: 201, length: 262300}
	if got[0] != want0 {
		t.Errorf("entry 0 = %+v, want %+v", got[0], want0)
	}
	if got[1].remote != netip.MustParseAddr("2001:2:0:ff::1") || got[1].key() != "GET /ka6/0/1 (75 bytes)" {
		t.Errorf("entry 1 = %+v", got[1])
	}
	if got[2].method != "" {
		t.Errorf("garbage line parsed as %+v", got[2])
	}
}

// TestLabBinaries checks the --bin and --nginx validation demo and bench
// share: each error names its flag.
func TestLabBinaries(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "tcpshadow")
	plain := filepath.Join(dir, "notes")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(plain, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ bin, nginx, want string }{
		{"", exe, "--bin is required"},
		{filepath.Join(dir, "missing"), exe, "--bin:"},
		{plain, exe, "--bin: " + plain + " is not an executable file"},
		{exe, plain, "--nginx:"},
	} {
		if _, _, err := labBinaries(tt.bin, tt.nginx); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("labBinaries(%q, %q): %v, want it to say %q", tt.bin, tt.nginx, err, tt.want)
		}
	}
	bin, ngx, err := labBinaries(exe, exe)
	if err != nil || bin != exe || ngx != exe {
		t.Errorf("labBinaries(%q, %q) = %q, %q, %v", exe, exe, bin, ngx, err)
	}
}
