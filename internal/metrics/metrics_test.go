package metrics

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
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
