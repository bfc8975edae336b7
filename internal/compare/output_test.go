package compare

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/metrics"
)

// handlerTransport serves requests with a handler in memory: no socket.
type handlerTransport struct{ h http.Handler }

func (t handlerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	w := httptest.NewRecorder()
	t.h.ServeHTTP(w, r)
	resp := w.Result()
	resp.Request = r
	return resp, nil
}

func muxOf(c *Comparer) http.Handler {
	mux := http.NewServeMux()
	for p, h := range c.Handlers() {
		mux.Handle(p, h)
	}
	mux.Handle("/metrics", metrics.Handler(c.Samples))
	return mux
}

// TestSamples scrapes the sample's metrics: responses by map, side and
// class, mismatches by pair, latency histograms per side.
func TestSamples(t *testing.T) {
	c := sampleComparer(t)
	hc := &http.Client{Transport: handlerTransport{muxOf(c)}}
	m, err := metrics.Scrape(hc, "http://daemon/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]float64{
		`tcpshadow_compare_requests_total{map="web"}`:                                  100,
		`tcpshadow_compare_responses_total{class="200",map="web",side="prod"}`:         100,
		`tcpshadow_compare_responses_total{class="500",map="web",side="shadow"}`:       10,
		`tcpshadow_compare_responses_total{class="timeout",map="web",side="shadow"}`:   3,
		`tcpshadow_compare_responses_total{class="-ERR",map="cache",side="shadow"}`:    1,
		`tcpshadow_compare_mismatches_total{map="web",prod="200",shadow="404"}`:        5,
		`tcpshadow_compare_mismatches_total{map="cache",prod="ok",shadow="-ERR"}`:      1,
		`tcpshadow_compare_latency_seconds_count{map="web",side="shadow"}`:             95,
		`tcpshadow_compare_latency_seconds_bucket{map="web",side="prod",le="0.001"}`:   100,
		`tcpshadow_compare_latency_seconds_bucket{map="web",side="shadow",le="0.025"}`: 85,
		`tcpshadow_compare_latency_seconds_bucket{map="web",side="shadow",le="+Inf"}`:  95,
		`tcpshadow_compare_pairs_dropped_total`:                                        0,
	} {
		if got, ok := m[k]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", k, got, ok, want)
		}
	}
	if _, ok := m[`tcpshadow_compare_mismatches_total{map="web",prod="200",shadow="200"}`]; ok {
		t.Error("a matching pair exported as a mismatch")
	}
}

// TestReportHandlers: /report.json is the snapshot; /report draws its
// numbers; both refuse writes.
func TestReportHandlers(t *testing.T) {
	c := sampleComparer(t)
	mux := muxOf(c)
	w := httptest.NewRecorder()
	mux.ServeHTTP(w, httptest.NewRequest("GET", "/report.json", nil))
	if w.Code != 200 || !strings.HasPrefix(w.Header().Get("Content-Type"), "application/json") {
		t.Fatalf("json: %d %s", w.Code, w.Header().Get("Content-Type"))
	}
	var raw map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &raw); err != nil {
		t.Fatal(err)
	}
	// The shape the issue names, read without this package's types.
	m0 := raw["maps"].([]any)[0].(map[string]any)
	prod := m0["prod"].(map[string]any)
	if m0["map"] != "web" || m0["protocol"] != "http" || m0["requests"] != 100.0 ||
		prod["classes"].(map[string]any)["200"] != 100.0 || prod["latency_ms"].(map[string]any)["p99"] == nil ||
		m0["mismatches"].([]any)[0].(map[string]any)["shadow"] != "500" || len(m0["top_divergent"].([]any)) != 4 {
		t.Fatalf("json shape: %v", m0)
	}

	w = httptest.NewRecorder()
	mux.ServeHTTP(w, httptest.NewRequest("GET", "/report", nil))
	page := w.Body.String()
	if w.Code != 200 || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/html") {
		t.Fatalf("page: %d %s", w.Code, w.Header().Get("Content-Type"))
	}
	for _, s := range []string{
		`<meta http-equiv="refresh" content="5">`,
		`<span class="requests" data-map="web">100</span>`,
		`<tr data-class="500"><td class="name">500</td><td class="prod-count">0</td><td>0.0%</td><td class="shadow-count">10</td><td>10.0%</td></tr>`,
		`<td class="mismatch" data-prod="200" data-shadow="404">5</td>`,
		`<td data-prod="200" data-shadow="200">80</td>`,
		`<td class="name request">GET /fail HTTP/1.1</td><td class="count">10</td>`,
		`<polygon class="dist-prod"`, `<polygon class="dist-shadow"`,
	} {
		if !strings.Contains(page, s) {
			t.Errorf("page lacks %s", s)
		}
	}
	for _, s := range []string{"<script", "src=", "http://", "https://"} {
		if strings.Contains(page, s) {
			t.Errorf("page has %q: no scripts, no external assets", s)
		}
	}
	for _, p := range []string{"/report", "/report.json"} {
		w = httptest.NewRecorder()
		mux.ServeHTTP(w, httptest.NewRequest("POST", p, nil))
		if w.Code != http.StatusMethodNotAllowed {
			t.Errorf("POST %s: %d", p, w.Code)
		}
	}
}

// TestReportPageEscapes: a request summary with markup is text on the
// page, not markup.
func TestReportPageEscapes(t *testing.T) {
	c := newTestComparer(t, Config{})
	feed(t, c, mkPair(0, get("/<script>alert(1)</script>"), ok200, err500, 0, 0))
	w := httptest.NewRecorder()
	muxOf(c).ServeHTTP(w, httptest.NewRequest("GET", "/report", nil))
	if strings.Contains(w.Body.String(), "<script>") || !strings.Contains(w.Body.String(), "&lt;script&gt;") {
		t.Fatal("summary not escaped")
	}
}

// TestWriteText prints the sample side by side.
func TestWriteText(t *testing.T) {
	var b bytes.Buffer
	if err := WriteText(&b, sampleComparer(t).Snapshot()); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	rows := map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		rows[strings.Join(strings.Fields(l), " ")] = true
	}
	for _, s := range []string{
		"class prod share shadow share",
		"200 100 100.0% 80 80.0%",
		"500 0 0.0% 10 10.0%",
		"timeout 0 0.0% 3 3.0%",
		"p50 1.000 4.000",
		"10 200 → 500 1.000 40.000 GET /fail HTTP/1.1",
		"1 ok → -ERR 1.000 1.000 FLUSHALL",
	} {
		if !rows[s] {
			t.Errorf("text lacks the row %q:\n%s", s, out)
		}
	}
	for _, s := range []string{
		"map web (http): 100 requests\n",
		"    200 → 500: 10 (10.0%)\n",
		"    200 → timeout: 3 (3.0%)\n",
		"map cache (redis): 4 requests\n",
		"    ok → -ERR: 1 (25.0%)\n",
		"GET /fail HTTP/1.1\n",
		"FLUSHALL\n",
	} {
		if !strings.Contains(out, s) {
			t.Errorf("text lacks %q:\n%s", s, out)
		}
	}
	if !rows["p99 1.000 39.050"] { // the 10 /fail at 40ms in the (30, 40] bucket
		t.Errorf("no p99 of ~40ms for the shadow:\n%s", out)
	}
}

// TestFetchReport fetches from a daemon, and gives a clear error for
// every way a --from can be wrong.
func TestFetchReport(t *testing.T) {
	c := sampleComparer(t)
	good := &http.Client{Transport: handlerTransport{muxOf(c)}}
	r, _, err := FetchReport(context.Background(), good, "http://daemon/report.json")
	if err != nil || len(r.Maps) != 2 || r.Maps[0].Requests != 100 {
		t.Fatalf("fetch: %v %+v", err, r)
	}
	serve := func(status int, body string) *http.Client {
		return &http.Client{Transport: handlerTransport{http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(status)
			w.Write([]byte(body))
		})}}
	}
	for name, tc := range map[string]struct {
		c    *http.Client
		want string
	}{
		"404":        {serve(404, "no"), "not a copy daemon with comparison on"},
		"500":        {serve(500, "boom"), "500"},
		"html":       {serve(200, "<html>hi</html>"), "not a tcpshadow report: bad JSON"},
		"other tool": {serve(200, `{"tool":"grafana","maps":[]}`), `tool "grafana"`},
		"no tool":    {serve(200, `{"maps":[]}`), "not a tcpshadow report"},
		"nameless":   {serve(200, `{"tool":"tcpshadow","maps":[{"map":""}]}`), "map 0 has no name"},
		"huge":       {serve(200, `{"tool":"tcpshadow","x":"`+strings.Repeat("a", MaxReportBytes)+`"}`), "more than"},
		"truncated":  {serve(200, `{"tool":"tcpshadow","maps":[`), "bad JSON"},
	} {
		_, _, err := FetchReport(context.Background(), tc.c, "http://daemon/report.json")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
	for in, want := range map[string]string{
		"198.18.0.1:9464":                "http://198.18.0.1:9464/report.json",
		"http://198.18.0.1:9464/metrics": "http://198.18.0.1:9464/report.json",
		"https://shadow.example/x.json":  "https://shadow.example/x.json",
		"[2001:2::1]:9464":               "http://[2001:2::1]:9464/report.json",
	} {
		if got, err := ReportURL(in); err != nil || got != want {
			t.Errorf("ReportURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for in, want := range map[string]string{
		"":               "--from is required",
		"ftp://host/x":   "http or https",
		"http://:9464":   "no host",
		"host:99999":     "port",
		"http://h:1/%zz": "want HOST:PORT",
	} {
		if _, err := ReportURL(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ReportURL(%q): %v, want %q", in, err, want)
		}
	}
}

func readLines(t *testing.T, p string) []divergenceEntry {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []divergenceEntry
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e divergenceEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("%s: %q: %v", p, sc.Text(), err)
		}
		out = append(out, e)
	}
	return out
}

// TestDivergenceLog writes the sample's divergences: one JSON line each
// with both classes and latencies, mode 0600; matching pairs not logged.
func TestDivergenceLog(t *testing.T) {
	p := filepath.Join(t.TempDir(), "divergence.log")
	now := time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC)
	c := newTestComparer(t, Config{Divergence: LogConfig{Path: p}, Now: func() time.Time { return now }})
	ms := time.Millisecond
	feed(t, c, mkPair(0, get("/"), ok200, ok200, ms, ms), mkPair(0, get("/fail"), ok200, err500, ms, 30*ms),
		mkPair(0, get("/slow"), ok200, "", ms, 0))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c.Run(ctx) // drains and closes the log
	es := readLines(t, p)
	if len(es) != 2 {
		t.Fatalf("%d lines: %+v", len(es), es)
	}
	e := es[0]
	if e.Map != "web" || e.Client != "198.18.0.10:40000" || e.Request != "GET /fail HTTP/1.1" || e.Prod != "200" ||
		e.Shadow != "500" || e.ProdMS == nil || *e.ProdMS != 1 || *e.ShadowMS != 30 || !e.Time.Equal(now) || e.Protocol != "http" {
		t.Fatalf("entry %+v", e)
	}
	if es[1].Shadow != "timeout" || es[1].ShadowMS != nil {
		t.Fatalf("unanswered entry %+v", es[1])
	}
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v", fi.Mode(), err)
	}
}

// TestDivergenceLogRotates writes far more than the bound: the file and
// its old copies each stay under it, no more copies than configured
// exist, and the lines over the rate are counted, not written.
func TestDivergenceLogRotates(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "d.log")
	sec := time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC)
	now := sec
	c := newTestComparer(t, Config{Divergence: LogConfig{Path: p, MaxBytes: 4096, Files: 2, PerSecond: 50},
		Now: func() time.Time { return now }})
	for i := range 40 { // 40 seconds, 60 divergences each
		now = sec.Add(time.Duration(i) * time.Second)
		var ps []Pair
		for range 60 {
			ps = append(ps, mkPair(0, get("/fail"), ok200, err500, 0, 0))
		}
		feed(t, c, ps...)
	}
	c.divlog.close()
	l := c.divlog
	if l.logged.Load() != 40*50 || l.suppressed.Load() != 40*10 || l.errs.Load() != 0 {
		t.Fatalf("logged %d suppressed %d errors %d", l.logged.Load(), l.suppressed.Load(), l.errs.Load())
	}
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
		fi, _ := e.Info()
		if fi.Size() > 4096 {
			t.Errorf("%s: %d bytes, over the bound", e.Name(), fi.Size())
		}
	}
	if strings.Join(names, " ") != "d.log d.log.1 d.log.2" {
		t.Fatalf("files %v", names)
	}
	if n := len(readLines(t, p+".1")); n < 10 {
		t.Fatalf("the rotated file holds %d lines", n)
	}
}

// TestDivergenceLogRefusesLinks: a symbolic link or a FIFO at the path is
// refused, and the link's target is untouched.
func TestDivergenceLogRefusesLinks(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "passwd")
	os.WriteFile(target, []byte("root:x:0:0\n"), 0o644)
	link := filepath.Join(dir, "d.log")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	_, err := New(Config{Maps: []MapConfig{{Name: "a"}}, Workers: 1, Divergence: LogConfig{Path: link}})
	if err == nil || !errors.Is(err, syscall.ELOOP) {
		t.Fatalf("symlink: %v", err)
	}
	if b, _ := os.ReadFile(target); string(b) != "root:x:0:0\n" {
		t.Fatal("the link's target changed")
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// Opened without blocking, a FIFO with no reader fails (ENXIO); with
	// one, it is no regular file. Either way it is refused.
	if _, err := New(Config{Maps: []MapConfig{{Name: "a"}}, Workers: 1, Divergence: LogConfig{Path: fifo}}); err == nil {
		t.Fatal("a FIFO taken as the divergence log")
	}
	if _, err := os.Stat(filepath.Join(dir, "nothing")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
}

// TestNilComparerHandlers: with comparison off the daemon can still mount
// the handlers; they say so with a 404, which `tcpshadow report` names.
func TestNilComparerHandlers(t *testing.T) {
	var c *Comparer
	for p, h := range c.Handlers() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", p, nil))
		if w.Code != http.StatusNotFound || !strings.Contains(w.Body.String(), "comparison is off") {
			t.Errorf("%s: %d %q", p, w.Code, w.Body.String())
		}
	}
	if c.Recorder(0) != nil {
		t.Error("a nil Comparer gave a Recorder")
	}
}

// TestEmptyReport: before any pair, the page, the JSON and the text all
// render, with zeros.
func TestEmptyReport(t *testing.T) {
	c := newTestComparer(t, Config{})
	for _, p := range []string{"/report", "/report.json"} {
		w := httptest.NewRecorder()
		muxOf(c).ServeHTTP(w, httptest.NewRequest("GET", p, nil))
		if w.Code != 200 || !strings.Contains(w.Body.String(), "web") {
			t.Fatalf("%s: %d %q", p, w.Code, w.Body.String())
		}
	}
	var b bytes.Buffer
	if err := WriteText(&b, c.Snapshot()); err != nil || !strings.Contains(b.String(), "map web (http): 0 requests") ||
		!strings.Contains(b.String(), "mismatches: none") {
		t.Fatalf("text %v:\n%s", err, b.String())
	}
	b.Reset()
	if err := WriteText(&b, Report{Tool: ReportTool}); err != nil || b.String() != "no maps compared\n" {
		t.Fatalf("no maps: %v %q", err, b.String())
	}
}
