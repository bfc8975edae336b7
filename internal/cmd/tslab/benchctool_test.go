package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestFindCTool(t *testing.T) {
	dir := t.TempDir()
	if _, err := findCTool(context.Background(), dir); err == nil {
		t.Fatal("findCTool accepted a directory without the binaries")
	}
	// A make install layout: both in sbin, answering -v like the tools.
	sbin := filepath.Join(dir, "sbin")
	if err := os.MkdirAll(sbin, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, ver := range map[string]string{"tcpcopy": "tcpcopy version:1.3.0", "intercept": "intercept version:1.0.0"} {
		script := "#!/bin/sh\necho '" + ver + "'\n"
		if err := os.WriteFile(filepath.Join(sbin, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	c, err := findCTool(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if c.tcpcopy != filepath.Join(sbin, "tcpcopy") || c.intercept != filepath.Join(sbin, "intercept") {
		t.Errorf("found %s, %s; want both in %s", c.tcpcopy, c.intercept, sbin)
	}
	if c.version != "tcpcopy version:1.3.0, intercept version:1.0.0" {
		t.Errorf("version %q", c.version)
	}
}

func TestRenderVersus(t *testing.T) {
	step := func(copier, agent time.Duration, copied, prod int, hwm int64) *stepResult {
		return &stepResult{copierCPU: copier, agentCPU: agent, shadow: copied, prod: prod,
			load: &loadResult{ok: prod, elapsed: 10 * time.Second}, copierHWM: hwm, agentHWM: hwm / 2}
	}
	vs := []*vsStep{
		{series: series{shape: keepAlive, addrs: 1}, rate: 1000, runs: map[string][]*stepResult{
			toolOurs: {step(time.Second, time.Second, 10000, 10000, 30<<20)},
			toolC:    {step(2*time.Second, 2*time.Second, 10000, 10000, 40<<20)},
		}, copierIdle: map[string]int64{}, agentIdle: map[string]int64{}},
		{series: series{shape: keepAlive, addrs: 1}, rate: 10000, runs: map[string][]*stepResult{
			toolOurs: {step(5*time.Second, 5*time.Second, 100000, 100000, 30<<20)},
			toolC:    {step(4*time.Second, 4*time.Second, 99000, 100000, 40<<20)},
		}, copierIdle: map[string]int64{}, agentIdle: map[string]int64{}},
	}
	var b strings.Builder
	renderVersus(&b, &ctool{version: "tcpcopy 1.3.0, intercept 1.0.0"}, vs, 1)
	out := b.String()
	for _, want := range []string{
		"| keep-alive 1k req/s, 1 address | 1000 / 1000 | 200 (100 + 100) | 400 (200 + 200) | **0.50** | 100% / 100% | 30.0 MiB / 40.0 MiB |",
		"| 100% / 99% |",
		"cost at 1k is 2.0× its cost at 10k",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}
