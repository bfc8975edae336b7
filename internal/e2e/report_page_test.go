package e2e

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/compare"
	"github.com/tcpshadow/tcpshadow/internal/lab"
)

// artifactDir is where tests keep what a person may want to look at
// after a run (TCPSHADOW_ARTIFACTS, default /tmp/tcpshadow-artifacts).
func artifactDir(t *testing.T) string {
	t.Helper()
	d := os.Getenv("TCPSHADOW_ARTIFACTS")
	if d == "" {
		d = filepath.Join(os.TempDir(), "tcpshadow-artifacts")
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// pagePairs feeds c: map web (HTTP/1.1) 200 requests, 150 matching 200s
// (prod 2ms, shadow 3ms), 30 of /checkout 200 → 500 (shadow 50ms), 20 of
// /gone 200 → 404; map cache (Redis) 10, 3 of them -ERR on the shadow.
func pagePairs(t *testing.T, c *compare.Comparer) {
	t.Helper()
	r := c.Recorder(0)
	put := func(m uint16, req, prod, shadow string, prodMS, shadowMS float64) {
		var p compare.Pair
		p.Map = m
		p.SetRequest([]byte(req))
		p.Prod.SetHead([]byte(prod))
		p.Shadow.SetHead([]byte(shadow))
		p.Prod.FirstByte = int64(prodMS * 1e6)
		p.Shadow.FirstByte = int64(shadowMS * 1e6)
		for !r.Put(&p) {
			t.Fatal("the ring is full")
		}
	}
	const ok, e500, e404 = "HTTP/1.1 200 OK\r\n", "HTTP/1.1 500 Internal Server Error\r\n", "HTTP/1.1 404 Not Found\r\n"
	for i := range 200 {
		switch {
		case i%20 < 3:
			put(0, "GET /checkout HTTP/1.1\r\n", ok, e500, 2, 50)
		case i%10 == 5:
			put(0, "GET /gone HTTP/1.1\r\n", ok, e404, 2, 3)
		default:
			put(0, fmt.Sprintf("GET /item/%d HTTP/1.1\r\n", i), ok, ok, 2, 3)
		}
	}
	for i := range 10 {
		shadow := "+OK\r\n"
		if i < 3 {
			shadow = "-ERR unknown command 'FLUSHDB'\r\n"
		}
		put(1, "*1\r\n$7\r\nFLUSHDB\r\n", "+OK\r\n", shadow, 1, 1)
	}
}

// TestReportPageInBrowser serves /report from a Comparer fed known pairs
// inside the lab's prod namespace, loads it with Debian's chromium
// (headless, in the client namespace: the lab is sealed, so the browser
// reaches nothing else) and checks the DOM for the numbers: requests,
// the class table, the mismatch matrix, the shadow's p99, the top
// divergent request. A screenshot is kept as an artifact and must show
// both latency distributions' fills.
func TestReportPageInBrowser(t *testing.T) {
	l := lab.NewT(t, lab.Config{Prefix: "tshpage"})
	browser, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is not installed: run scripts/deps.sh (make deps)")
	}
	c, err := compare.New(compare.Config{Maps: []compare.MapConfig{{Name: "web", Protocol: compare.HTTP1},
		{Name: "cache", Protocol: compare.Auto}}, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	pagePairs(t, c)
	done, stop := context.WithCancel(context.Background())
	stop()
	c.Run(done) // drains the pairs put, then returns

	ln, err := l.Prod.Listen("tcp", net.JoinHostPort(lab.ProdClientSideV4.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	for p, h := range c.Handlers() {
		mux.Handle(p, h)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	url := "http://" + ln.Addr().String() + "/report"

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	profile := t.TempDir()
	run := func(extra ...string) []byte {
		t.Helper()
		args := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
			"--disable-background-networking", "--disable-component-update", "--disable-sync",
			"--disable-default-apps", "--disable-extensions", "--disable-crash-reporter",
			"--user-data-dir=" + profile, "--window-size=1000,1600", "--hide-scrollbars"}, extra...)
		cmd := l.Client.Command(ctx, browser, append(args, url)...)
		cmd.Env = append(os.Environ(), "HOME="+profile)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		cmd.WaitDelay = 5 * time.Second
		if err := cmd.Run(); err != nil {
			t.Fatalf("chromium %v: %v\n%s", extra, err, tail(stderr.String(), 2000))
		}
		return stdout.Bytes()
	}

	dom := string(run("--dump-dom"))
	snap := c.Snapshot()
	web := snap.Maps[0]
	p99 := strconv.FormatFloat(web.Shadow.LatencyMS.P99, 'f', 3, 64)
	if web.Shadow.LatencyMS.P99 < 40 || web.Prod.LatencyMS.P99 > 2.5 {
		t.Fatalf("p99 prod %.3f shadow %.3f: the sample is not what the test means", web.Prod.LatencyMS.P99, web.Shadow.LatencyMS.P99)
	}
	for _, want := range []string{
		`<span class="requests" data-map="web">200</span>`,
		`<span class="requests" data-map="cache">10</span>`,
		`<tr data-class="500"><td class="name">500</td><td class="prod-count">0</td><td>0.0%</td><td class="shadow-count">30</td><td>15.0%</td></tr>`,
		`<tr data-class="200"><td class="name">200</td><td class="prod-count">200</td><td>100.0%</td><td class="shadow-count">150</td><td>75.0%</td></tr>`,
		`<td class="mismatch" data-prod="200" data-shadow="500">30</td>`,
		`<td class="mismatch" data-prod="200" data-shadow="404">20</td>`,
		`<td data-prod="200" data-shadow="200">150</td>`,
		`<td class="mismatch" data-prod="ok" data-shadow="-ERR">3</td>`,
		`<td class="p99">` + p99 + `</td>`,
		`<td class="name request">GET /checkout HTTP/1.1</td><td class="count">30</td>`,
		`<td class="name request">FLUSHDB</td><td class="count">3</td>`,
		`<polygon class="dist-prod"`,
		`<polygon class="dist-shadow"`,
	} {
		if !strings.Contains(dom, want) {
			t.Errorf("the DOM lacks %s", want)
		}
	}
	if t.Failed() {
		t.Logf("DOM:\n%s", tail(dom, 6000))
	}

	shot := filepath.Join(artifactDir(t), "report-page.png")
	os.Remove(shot)
	run("--screenshot=" + shot)
	f, err := os.Open(shot)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot %s: %v", shot, err)
	}
	// The fills are the sides' colours at 35% over white: prod
	// (177,199,233), shadow (242,205,169); nothing else on the page has
	// them.
	near := func(r, g, b uint32, want [3]uint32) bool {
		d := func(a, b uint32) uint32 {
			if a > b {
				return a - b
			}
			return b - a
		}
		return d(r>>8, want[0])+d(g>>8, want[1])+d(b>>8, want[2]) < 24
	}
	var prodPx, shadowPx int
	bnd := img.Bounds()
	for y := bnd.Min.Y; y < bnd.Max.Y; y++ {
		for x := bnd.Min.X; x < bnd.Max.X; x++ {
			r, g, b, _ := img.At(x, y).RGBA()
			if near(r, g, b, [3]uint32{177, 199, 233}) {
				prodPx++
			}
			if near(r, g, b, [3]uint32{242, 205, 169}) {
				shadowPx++
			}
		}
	}
	t.Logf("screenshot %s: %dx%d, prod fill %d px, shadow fill %d px", shot, bnd.Dx(), bnd.Dy(), prodPx, shadowPx)
	if prodPx < 100 || shadowPx < 100 {
		t.Fatalf("the screenshot shows %d prod and %d shadow fill pixels: the distributions are not drawn", prodPx, shadowPx)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}
