package metrics

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// handlerTransport serves requests with a handler in memory: no socket.
type handlerTransport struct{ h http.Handler }

func (t handlerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	w := httptest.NewRecorder()
	t.h.ServeHTTP(w, r)
	return w.Result(), nil
}

func samples() []Sample {
	return []Sample{
		{Name: "tcpshadow_copy_events_total", Help: "events", Labels: []string{"event", "captured"}, Value: 42},
		{Name: "tcpshadow_copy_events_total", Help: "events", Labels: []string{"event", "shed_memory"}, Value: 0},
		{Name: "tcpshadow_copy_sessions_active", Help: "active", Kind: Gauge, Value: 3},
	}
}

func TestHandlerAndScrapeAgree(t *testing.T) {
	c := &http.Client{Transport: handlerTransport{Handler(samples)}}
	m, err := Scrape(c, "http://daemon/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if m[`tcpshadow_copy_events_total{event="captured"}`] != 42 || m["tcpshadow_copy_sessions_active"] != 3 {
		t.Fatalf("scraped %v", m)
	}
	if _, ok := m[`tcpshadow_copy_events_total{event="shed_memory"}`]; !ok {
		t.Fatal("a zero counter is missing from the exposition")
	}
	if m["go_goroutines"] == 0 {
		t.Fatal("runtime metrics missing")
	}
	c = &http.Client{Transport: handlerTransport{http.NotFoundHandler()}}
	if _, err := Scrape(c, "http://daemon/metrics"); err == nil {
		t.Fatal("a 404 scraped without error")
	}
}

func TestSummaryLeavesOutZeroCounters(t *testing.T) {
	got := Summary(samples(), "tcpshadow_")
	if got != "copy_events.captured=42 copy_sessions_active=3" {
		t.Fatalf("summary %q", got)
	}
	if strings.Contains(got, "shed_memory") {
		t.Fatal("zero counter in the summary")
	}
}

// TestServerBounds: every connection is bounded in time and header size.
func TestServerBounds(t *testing.T) {
	srv := newServer(samples, true, nil)
	if srv.ReadHeaderTimeout <= 0 || srv.ReadTimeout <= 0 || srv.WriteTimeout <= 0 || srv.IdleTimeout <= 0 {
		t.Errorf("timeouts: header %v, read %v, write %v, idle %v", srv.ReadHeaderTimeout, srv.ReadTimeout, srv.WriteTimeout, srv.IdleTimeout)
	}
	if srv.WriteTimeout <= MaxProfileSeconds*time.Second {
		t.Errorf("write timeout %v cuts the longest profile (%ds)", srv.WriteTimeout, MaxProfileSeconds)
	}
	if srv.MaxHeaderBytes <= 0 || srv.MaxHeaderBytes > 8<<10 {
		t.Errorf("MaxHeaderBytes %d", srv.MaxHeaderBytes)
	}
}

// TestConnectionLimit: connections beyond the limit are closed as they
// come; once some go, scrapes are served again.
func TestConnectionLimit(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := newServer(samples, false, nil)
	go srv.Serve(limitListener(ln, 4))
	t.Cleanup(func() { srv.Close() })
	var idle []net.Conn
	for range 4 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	// Let the server take the four before the fifth comes.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
		if err == io.EOF {
			break // closed at once
		}
		if time.Now().After(deadline) {
			t.Fatalf("a connection beyond the limit stayed open: %v", err)
		}
	}
	for _, c := range idle {
		c.Close()
	}
	hc := &http.Client{Timeout: 5 * time.Second}
	deadline = time.Now().Add(5 * time.Second)
	for {
		_, err := Scrape(hc, "http://"+ln.Addr().String()+"/metrics")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("scrape after the idle connections went: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPprofLoopbackOnly: the profiler is refused on an address that is not
// loopback, served to loopback clients only, and for bounded durations.
func TestPprofLoopbackOnly(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:9464": true, "[::1]:9464": true, "localhost:9464": true, "127.3.4.5:1": true,
		":9464": false, "0.0.0.0:9464": false, "198.18.0.1:9464": false, "[::]:9464": false, "x": false,
	} {
		if IsLoopback(addr) != want {
			t.Errorf("IsLoopback(%q) = %v", addr, !want)
		}
	}
	err := Serve(t.Context(), "198.18.0.1:9464", samples, true, slog.New(slog.DiscardHandler))
	if !errors.Is(err, ErrPprofNotLoopback) {
		t.Fatalf("Serve with the profiler on a non-loopback address: %v", err)
	}
	h := newServer(samples, true, nil).Handler
	for _, tt := range []struct {
		remote, path string
		code         int
	}{
		{"198.18.0.2:4000", "/debug/pprof/", http.StatusForbidden},
		{"198.18.0.2:4000", "/debug/pprof/trace?seconds=1", http.StatusForbidden},
		{"127.0.0.1:4000", "/debug/pprof/trace?seconds=600", http.StatusBadRequest},
		{"127.0.0.1:4000", "/debug/pprof/profile?seconds=31", http.StatusBadRequest},
		{"[::1]:4000", "/debug/pprof/", http.StatusOK},
		{"198.18.0.2:4000", "/metrics", http.StatusOK},
	} {
		r := httptest.NewRequest("GET", tt.path, nil)
		r.RemoteAddr = tt.remote
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != tt.code {
			t.Errorf("%s from %s: %d, want %d", tt.path, tt.remote, w.Code, tt.code)
		}
	}
}

// TestHistogramExposition exports a Histogram sample: cumulative buckets,
// count and sum as Prometheus reads them, and no entry in the summary.
func TestHistogramExposition(t *testing.T) {
	src := func() []Sample {
		return []Sample{{Name: "tcpshadow_compare_latency_seconds", Help: "latency", Kind: Histogram,
			Labels: []string{"map", "web", "side", "prod"}, Value: 1.5, Count: 4,
			Buckets: map[float64]uint64{0.001: 1, 0.01: 3, 1: 4}}}
	}
	c := &http.Client{Transport: handlerTransport{Handler(src)}}
	m, err := Scrape(c, "http://daemon/metrics")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{
		`tcpshadow_compare_latency_seconds_bucket{map="web",side="prod",le="0.001"}`: 1,
		`tcpshadow_compare_latency_seconds_bucket{map="web",side="prod",le="0.01"}`:  3,
		`tcpshadow_compare_latency_seconds_bucket{map="web",side="prod",le="1"}`:     4,
		`tcpshadow_compare_latency_seconds_bucket{map="web",side="prod",le="+Inf"}`:  4,
		`tcpshadow_compare_latency_seconds_count{map="web",side="prod"}`:             4,
		`tcpshadow_compare_latency_seconds_sum{map="web",side="prod"}`:               1.5,
	}
	for k, v := range want {
		if got, ok := m[k]; !ok || got != v {
			t.Errorf("%s = %v (present %v), want %v", k, got, ok, v)
		}
	}
	if s := Summary(src(), "tcpshadow_"); s != "" {
		t.Errorf("summary %q, want no histogram in it", s)
	}
}

// TestServeWithExtraHandlers: handlers given to ServeWith are served
// beside /metrics, by the same bounded server.
func TestServeWithExtraHandlers(t *testing.T) {
	extra := map[string]http.Handler{"/report.json": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, `{"tool":"tcpshadow"}`)
	})}
	srv := newServer(samples, false, extra)
	if srv.ReadHeaderTimeout != readHeaderTimeout || srv.MaxHeaderBytes != maxHeaderBytes {
		t.Fatal("the extra handlers' server lost its bounds")
	}
	for path, want := range map[string]int{"/report.json": 200, "/metrics": 200, "/report": 404} {
		w := httptest.NewRecorder()
		srv.Handler.ServeHTTP(w, httptest.NewRequest("GET", path, nil))
		if w.Code != want {
			t.Errorf("%s: %d, want %d", path, w.Code, want)
		}
	}
}
