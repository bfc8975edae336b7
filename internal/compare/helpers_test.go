package compare

import (
	"net/netip"
	"testing"
	"time"
)

var testClient = netip.MustParseAddrPort("198.18.0.10:40000")

// mkPair builds a pair: the request, each side's response (empty means no
// answer) and latencies.
func mkPair(m uint16, req, prod, shadow string, prodLat, shadowLat time.Duration) Pair {
	var p Pair
	p.Map, p.Client = m, testClient
	p.SetRequest([]byte(req))
	const t0 = int64(1e12)
	p.Prod.Sent, p.Shadow.Sent = t0, t0+int64(time.Millisecond)
	if prod != "" {
		p.Prod.SetHead([]byte(prod))
		p.Prod.FirstByte = p.Prod.Sent + int64(prodLat)
	}
	if shadow != "" {
		p.Shadow.SetHead([]byte(shadow))
		p.Shadow.FirstByte = p.Shadow.Sent + int64(shadowLat)
	}
	return p
}

func newTestComparer(t testing.TB, cfg Config) *Comparer {
	t.Helper()
	if cfg.Maps == nil {
		cfg.Maps = []MapConfig{{Name: "web", Protocol: HTTP1}}
	}
	if cfg.Workers == 0 {
		cfg.Workers = 1
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// feed puts pairs through worker 0's Recorder and drains them, a ring's
// worth at a time.
func feed(t testing.TB, c *Comparer, pairs ...Pair) {
	t.Helper()
	r := c.Recorder(0)
	for i := range pairs {
		if !r.Put(&pairs[i]) {
			c.drain()
			if !r.Put(&pairs[i]) {
				t.Fatal("put into a drained ring failed")
			}
		}
	}
	c.drain()
}

const (
	ok200  = "HTTP/1.1 200 OK\r\nServer: nginx\r\n\r\n"
	err500 = "HTTP/1.1 500 Internal Server Error\r\n\r\n"
	nf404  = "HTTP/1.1 404 Not Found\r\n\r\n"
)

func get(path string) string { return "GET " + path + " HTTP/1.1\r\nHost: shop\r\n\r\n" }

// sampleComparer is map web (HTTP/1.1) with 100 requests: 80 matching
// 200s, 10 of /fail 200 → 500, 5 of /gone 200 → 404, 3 unanswered by the
// shadow, 2 reset by it; prod answers in 1ms, the shadow in 4ms, /fail in
// 40ms. Map cache (Redis) has 4 requests, one renamed command failing.
func sampleComparer(t testing.TB) *Comparer {
	c := newTestComparer(t, Config{Maps: []MapConfig{{Name: "web", Protocol: HTTP1}, {Name: "cache", Protocol: Auto}}})
	var ps []Pair
	ms := time.Millisecond
	for range 80 {
		ps = append(ps, mkPair(0, get("/"), ok200, ok200, ms, 4*ms))
	}
	for range 10 {
		ps = append(ps, mkPair(0, get("/fail"), ok200, err500, ms, 40*ms))
	}
	for range 5 {
		ps = append(ps, mkPair(0, get("/gone"), ok200, nf404, ms, 4*ms))
	}
	for range 3 {
		ps = append(ps, mkPair(0, get("/slow"), ok200, "", ms, 0))
	}
	for range 2 {
		p := mkPair(0, get("/reset"), ok200, "", ms, 0)
		p.Shadow.Outcome = Reset
		ps = append(ps, p)
	}
	ps = append(ps,
		mkPair(1, "*1\r\n$4\r\nPING\r\n", "+PONG\r\n", "+PONG\r\n", ms, ms),
		mkPair(1, "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n", "+OK\r\n", "+OK\r\n", ms, ms),
		mkPair(1, "*1\r\n$8\r\nFLUSHALL\r\n", "+OK\r\n", "-ERR unknown command 'FLUSHALL'\r\n", ms, ms),
		mkPair(1, "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", "$1\r\nv\r\n", "$1\r\nv\r\n", ms, ms),
	)
	feed(t, c, ps...)
	return c
}
