package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/capture/capturetest"
	"github.com/tcpshadow/tcpshadow/intercept"
	"github.com/tcpshadow/tcpshadow/internal/daemon"
	"github.com/tcpshadow/tcpshadow/internal/metrics"
	"github.com/tcpshadow/tcpshadow/internal/pcapdump"
	"github.com/tcpshadow/tcpshadow/tcpstate"
)

// handlerTransport serves requests with a handler in memory: no socket,
// not even loopback.
type handlerTransport struct {
	h    http.Handler
	seen []*http.Request
}

func (ht *handlerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	ht.seen = append(ht.seen, r)
	rec := httptest.NewRecorder()
	ht.h.ServeHTTP(rec, r)
	resp := rec.Result()
	resp.Request = r
	return resp, nil
}

type nopSender struct{}

func (nopSender) Send([]byte) error { return nil }

// daemonSamples returns the samples the copy daemon or the agent really
// exports (zero-valued: nothing runs), dump included, so the test follows
// the metric names wherever they go.
func daemonSamples(t testing.TB, role string) []metrics.Sample {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	src := capturetest.New(1)
	dump, err := pcapdump.Open(pcapdump.Config{Path: filepath.Join(t.TempDir(), "d.pcap")}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dump.Close() })
	var out []metrics.Sample
	switch role {
	case "copy":
		client := intercept.NewClient(intercept.ClientConfig{Addr: "198.18.1.3:36524"}, func([]byte) {}, log)
		eng, err := tcpstate.NewEngine(tcpstate.Config{Maps: []tcpstate.Map{{Local: anyPort(80), Target: ap("198.18.1.2:80")}}},
			[]tcpstate.Sender{nopSender{}}, client, log)
		if err != nil {
			t.Fatal(err)
		}
		out = daemon.CopySamples(eng, client, src, src)
	case "intercept":
		out = daemon.AgentSamples(intercept.NewAgent(intercept.AgentConfig{InsecureNoAuth: true}, src, nil, log), src)
	}
	return append(out, daemon.DumpSamples(dump)...)
}

// stageOf is where a metric belongs, written independently of stats.go.
func stageOf(role string, s metrics.Sample) string {
	n := s.Name
	switch {
	case strings.HasPrefix(n, "tcpshadow_dump_"):
		return "dump"
	case role == "intercept":
		switch strings.TrimSuffix(strings.TrimPrefix(n, "tcpshadow_intercept_"), "_total") {
		case "kernel_received", "captured", "bad", "kernel_dropped", "interface_dropped", "non_ip",
			"ring_bytes", "ring_grown", "ring_grow_failed", "ring_cut", "ring_duplicates":
			return "capture"
		case "peers", "peers_refused", "peer_errors", "conns_shed", "accept_errors", "bad_frames", "peer_throttled":
			return "peers"
		}
		return "relay"
	case strings.HasPrefix(n, "tcpshadow_capture_"):
		return "capture"
	case strings.HasPrefix(n, "tcpshadow_agent_"):
		return "agent link"
	case n == "tcpshadow_copy_events_total" && !strings.HasPrefix(s.Labels[1], "sessions_"):
		return "engine"
	}
	return "sessions"
}

// parseTable reads stats output back: stage titles in order, and per
// stage its rows' values.
func parseTable(t testing.TB, out string) (order []string, rows map[string]map[string]string) {
	t.Helper()
	rows = make(map[string]map[string]string)
	cur := ""
	for _, line := range strings.Split(out, "\n")[1:] {
		switch {
		case line == "":
		case !strings.HasPrefix(line, "  "):
			cur = line
			order = append(order, cur)
			rows[cur] = make(map[string]string)
		case strings.TrimSpace(line) == "(all zero)":
		default:
			f := strings.Fields(line)
			rows[cur][strings.Join(f[:len(f)-1], " ")] = f[len(f)-1]
		}
	}
	return order, rows
}

// runStats runs the stats command against handler h.
func runStats(t testing.TB, h http.Handler, args ...string) (string, *handlerTransport, error) {
	t.Helper()
	ht := &handlerTransport{h: h}
	cmd := newStatsCmdWith(&statsOptions{client: &http.Client{Transport: ht}})
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(io.Discard)
	cmd.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := cmd.ExecuteContext(ctx)
	return out.String(), ht, err
}

// TestStatsTable serves each daemon's real metric set, with distinct
// values, and checks the table shows every number in its stage, stages in
// datapath order, zero counters only with --all and gauges always.
func TestStatsTable(t *testing.T) {
	wantOrder := map[string][]string{
		"copy":      {"capture", "engine", "sessions", "agent link", "dump"},
		"intercept": {"capture", "relay", "peers", "dump"},
	}
	for _, role := range []string{"copy", "intercept"} {
		t.Run(role, func(t *testing.T) {
			samples := daemonSamples(t, role)
			var zeroCounter, zeroGauge string
			for i := range samples {
				samples[i].Value = float64(1000 + i)
				switch {
				case zeroCounter == "" && samples[i].Kind == metrics.Counter && i > 3:
					samples[i].Value, zeroCounter = 0, statDisplay(samples[i])
				case zeroGauge == "" && samples[i].Kind == metrics.Gauge:
					samples[i].Value, zeroGauge = 0, statDisplay(samples[i])
				}
			}
			h := metrics.Handler(func() []metrics.Sample { return samples })
			for _, all := range []bool{false, true} {
				args := []string{"--from", "198.18.0.1:9464"}
				if all {
					args = append(args, "--all")
				}
				out, ht, err := runStats(t, h, args...)
				if err != nil {
					t.Fatal(err)
				}
				if len(ht.seen) != 1 || ht.seen[0].URL.String() != "http://198.18.0.1:9464/metrics" {
					t.Fatalf("requests %v: want one GET of http://198.18.0.1:9464/metrics", ht.seen)
				}
				if !strings.HasPrefix(out, map[string]string{"copy": "copy daemon", "intercept": "intercept agent"}[role]) {
					t.Errorf("first line %q does not say which daemon", strings.SplitN(out, "\n", 2)[0])
				}
				order, rows := parseTable(t, out)
				if !slices.Equal(order, wantOrder[role]) {
					t.Errorf("stages %q, want %q", order, wantOrder[role])
				}
				for _, s := range samples {
					stage, name := stageOf(role, s), statDisplay(s)
					got, ok := rows[stage][name]
					if s.Value == 0 && s.Kind == metrics.Counter && !all {
						if ok {
							t.Errorf("zero counter %s shown without --all", name)
						}
						continue
					}
					if want := strconv.FormatFloat(s.Value, 'f', -1, 64); got != want {
						t.Errorf("%s %s (%s): %q, want %q in stage %s", s.Name, s.Labels, name, got, want, stage)
					}
				}
				if zeroGauge != "" {
					found := false
					for _, r := range rows {
						if r[zeroGauge] == "0" {
							found = true
						}
					}
					if !found {
						t.Errorf("gauge %s at zero not shown:\n%s", zeroGauge, out)
					}
				}
				if strings.Contains(out, "\nother\n") {
					t.Errorf("a metric of the daemon fell into \"other\":\n%s", out)
				}
			}
			if zeroCounter == "" {
				t.Fatal("no counter set to zero")
			}
		})
	}
}

// statDisplay is the row name stats gives a sample.
func statDisplay(s metrics.Sample) string {
	r := statRow{name: s.Name}
	if len(s.Labels) == 2 {
		r.label = s.Labels[1]
	}
	return r.display()
}

// TestStatsOther checks metrics stats does not know are still shown, and
// that a stage with only zero counters says so.
func TestStatsOther(t *testing.T) {
	samples := []metrics.Sample{
		{Name: "tcpshadow_intercept_captured_total", Value: 0},
		{Name: "tcpshadow_intercept_peers", Kind: metrics.Gauge, Value: 2},
		{Name: "tcpshadow_future_widgets_total", Value: 7},
	}
	out, _, err := runStats(t, metrics.Handler(func() []metrics.Sample { return samples }), "--from", "http://198.18.1.3:9464")
	if err != nil {
		t.Fatal(err)
	}
	order, rows := parseTable(t, out)
	if !slices.Equal(order, []string{"capture", "peers", "other"}) {
		t.Errorf("stages %q", order)
	}
	if rows["other"]["future_widgets"] != "7" || rows["peers"]["peers"] != "2" {
		t.Errorf("rows %v", rows)
	}
	if !strings.Contains(out, "capture\n  (all zero)\n") {
		t.Errorf("a stage of zeros is not marked:\n%s", out)
	}
}

func TestStatsErrors(t *testing.T) {
	text := func(body string, code int) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; version=0.0.4")
			w.WriteHeader(code)
			io.WriteString(w, body)
		})
	}
	ok := text("tcpshadow_intercept_captured_total 1\n", http.StatusOK)
	tests := []struct {
		h    http.Handler
		args []string
		want string
	}{
		{ok, nil, "--from is required"},
		{ok, []string{"--from", "ftp://198.18.0.1/metrics"}, "--from"},
		{ok, []string{"--from", "http:///metrics"}, "--from"},
		{ok, []string{"--from", "198.18.0.1:0"}, "--from"},
		{ok, []string{"--from", "198.18.0.1:99999"}, "--from"},
		{ok, []string{"--from", "198.18.0.1:9464", "--timeout", "0s"}, "--timeout"},
		{text("not found\n", http.StatusNotFound), []string{"--from", "198.18.0.1:9464"}, "404"},
		{text("go_goroutines 5\n", http.StatusOK), []string{"--from", "198.18.0.1:9464"}, "no tcpshadow"},
		{text("tcpshadow_copy_x{ 1\n", http.StatusOK), []string{"--from", "198.18.0.1:9464"}, "parse metrics"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, _, err := runStats(t, tt.h, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestStatsURL(t *testing.T) {
	for from, want := range map[string]string{
		"198.18.0.1:9464":                    "http://198.18.0.1:9464/metrics",
		"[2001:2::1]:9464":                   "http://[2001:2::1]:9464/metrics",
		"http://198.18.0.1:9464":             "http://198.18.0.1:9464/metrics",
		"http://198.18.0.1:9464/":            "http://198.18.0.1:9464/metrics",
		"http://198.18.0.1:9464/custom/path": "http://198.18.0.1:9464/custom/path",
		"https://prod.example/metrics":       "https://prod.example/metrics",
	} {
		o := &statsOptions{from: from, timeout: time.Second}
		got, err := o.url()
		if err != nil || got != want {
			t.Errorf("--from %s: %q, %v; want %q", from, got, err, want)
		}
	}
}
