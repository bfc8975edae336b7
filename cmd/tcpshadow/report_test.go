package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/compare"
	"github.com/tcpshadow/tcpshadow/internal/metrics"
)

// reportComparer is a Comparer fed 20 pairs on map web: 15 matching 200s,
// 5 of /checkout 200 → 500.
func reportComparer(t *testing.T) *compare.Comparer {
	t.Helper()
	c, err := compare.New(compare.Config{Maps: []compare.MapConfig{{Name: "web", Protocol: compare.HTTP1}}, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	r := c.Recorder(0)
	for i := range 20 {
		var p compare.Pair
		path, shadow := "/", "HTTP/1.1 200 OK\r\n"
		if i%4 == 0 {
			path, shadow = "/checkout", "HTTP/1.1 500 Internal Server Error\r\n"
		}
		p.SetRequest([]byte("GET " + path + " HTTP/1.1\r\nHost: shop\r\n\r\n"))
		p.Prod.SetHead([]byte("HTTP/1.1 200 OK\r\n"))
		p.Shadow.SetHead([]byte(shadow))
		p.Prod.FirstByte, p.Shadow.FirstByte = int64(2*time.Millisecond), int64(3*time.Millisecond)
		if !r.Put(&p) {
			t.Fatal("put refused")
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c.Run(ctx) // drains what was put, then returns
	return c
}

func runReport(t *testing.T, h http.Handler, args ...string) (string, error) {
	t.Helper()
	cmd := newReportCmdWith(&reportOptions{client: &http.Client{Transport: &handlerTransport{h: h}}})
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(io.Discard)
	cmd.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := cmd.ExecuteContext(ctx)
	return out.String(), err
}

// TestReportCommand prints a daemon's comparison as a table and as JSON.
func TestReportCommand(t *testing.T) {
	mux := http.NewServeMux()
	for p, h := range reportComparer(t).Handlers() {
		mux.Handle(p, h)
	}
	out, err := runReport(t, mux, "--from", "198.18.0.1:9464")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		rows[strings.Join(strings.Fields(l), " ")] = true
	}
	for _, want := range []string{"map web (http): 20 requests", "200 20 100.0% 15 75.0%", "500 0 0.0% 5 25.0%",
		"200 → 500: 5 (25.0%)", "p50 2.000 3.000", "5 200 → 500 2.000 3.000 GET /checkout HTTP/1.1"} {
		if !rows[want] {
			t.Errorf("no row %q in:\n%s", want, out)
		}
	}
	out, err = runReport(t, mux, "--from", "http://198.18.0.1:9464/metrics", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var r compare.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("--json: %v\n%s", err, out)
	}
	if len(r.Maps) != 1 || r.Maps[0].Requests != 20 || r.Maps[0].Shadow.Classes["500"] != 5 ||
		len(r.Maps[0].Mismatches) != 1 || r.Maps[0].Mismatches[0].Count != 5 {
		t.Fatalf("--json: %+v", r)
	}
}

// TestReportCommandErrors: bad flags and servers that are no copy daemon
// with comparison on get an error naming what is wrong.
func TestReportCommandErrors(t *testing.T) {
	metricsOnly := http.NewServeMux()
	metricsOnly.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "x 1\n") })
	for name, tc := range map[string]struct {
		h    http.Handler
		args []string
		want string
	}{
		"no from":      {metricsOnly, nil, "--from is required"},
		"bad scheme":   {metricsOnly, []string{"--from", "ftp://h/x"}, "http or https"},
		"bad timeout":  {metricsOnly, []string{"--from", "h:1", "--timeout", "0s"}, "--timeout"},
		"no report":    {metricsOnly, []string{"--from", "h:1"}, "not a copy daemon with comparison on"},
		"not json":     {http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "<html>") }), []string{"--from", "h:1"}, "bad JSON"},
		"another tool": {http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, `{"status":"ok"}`) }), []string{"--from", "h:1"}, "not a tcpshadow report"},
	} {
		if _, err := runReport(t, tc.h, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
}

// TestStatsShowsComparisonRows: stats tells the comparison's rows apart
// by all their labels (map, side, class), not by the last one only.
func TestStatsShowsComparisonRows(t *testing.T) {
	c := reportComparer(t)
	h := metrics.Handler(func() []metrics.Sample {
		return append([]metrics.Sample{{Name: "tcpshadow_copy_sessions_active", Kind: metrics.Gauge, Value: 1}}, c.Samples()...)
	})
	out, _, err := runStats(t, h, "--from", "198.18.0.1:9464")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		rows[strings.Join(strings.Fields(l), " ")] = true
	}
	for _, want := range []string{"compare_responses class=200 map=web side=prod 20",
		"compare_responses class=500 map=web side=shadow 5", "compare_mismatches map=web prod=200 shadow=500 5"} {
		if !rows[want] {
			t.Errorf("no row %q in:\n%s", want, out)
		}
	}
}
