package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/tcpshadow/tcpshadow/internal/compare"
	"github.com/tcpshadow/tcpshadow/internal/lab"
)

// exchange sends req to addr from ns on a fresh connection and returns
// the response as the datapath would see it: its first prefix bytes, when
// the first byte came and when the request went (ns on one monotonic
// clock), and the outcome.
func exchange(ns *lab.NS, addr netip.AddrPort, req []byte, prefix int) (head []byte, sent, first int64, o compare.Outcome) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := ns.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return nil, 0, 0, compare.Reset
	}
	defer c.Close()
	start := time.Now()
	mono := func() int64 { return int64(time.Since(start)) }
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write(req); err != nil {
		return nil, 0, 0, compare.Reset
	}
	sent = mono()
	buf := make([]byte, prefix)
	for len(head) < prefix {
		n, err := c.Read(buf[:prefix-len(head)])
		if n > 0 && len(head) == 0 {
			first = mono()
		}
		head = append(head, buf[:n]...)
		if err != nil {
			break
		}
		// The response goes on, or the server keeps the connection
		// (HTTP/2, Redis): a quiet spell after the last bytes ends it.
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	}
	if len(head) == 0 {
		return nil, sent, 0, compare.Closed
	}
	return head, sent, first, compare.Answered
}

// h2Request is a client's opening of an HTTP/2 connection with one GET of
// path: the preface, empty SETTINGS, a HEADERS frame encoded by Go's HPACK
// encoder (Huffman-coded strings).
func h2Request(path string) []byte {
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", path}, {":authority", "shop"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	frame := func(typ, flags byte, stream uint32, p []byte) []byte {
		h := []byte{byte(len(p) >> 16), byte(len(p) >> 8), byte(len(p)), typ, flags, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(h[5:], stream)
		return append(h, p...)
	}
	b := []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
	b = append(b, frame(0x4, 0, 0, nil)...)
	return append(b, frame(0x1, 0x5, 1, block.Bytes())...)
}

// nginxStatuses counts an nginx's access log lines by status, for paths
// with prefix.
func nginxStatuses(t *testing.T, n *nginx, prefix string) map[string]int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(n.dir, "access.log"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, line := range strings.Split(string(b), "\n") {
		if fs := strings.Fields(line); len(fs) == 3 && strings.HasPrefix(fs[1], prefix) {
			out[fs[2]]++
		}
	}
	return out
}

// TestCompareRealServers puts pairs of real servers' answers through a
// Comparer, as the datapath will: the same requests to prod and to a
// shadow that differs (nginx answering 500 on /fail/ and 404 on /gone/,
// over HTTP/1.1 and h2c; redis-server holding a key of another type; a
// server of ours delaying /slow/), each response cut at the default
// prefix. The report's mismatch counts must equal what the shadow's access
// log says it answered, the Redis -WRONGTYPE only the GETs of that key,
// and the delayed path's shadow p99 must be above prod's.
func TestCompareRealServers(t *testing.T) {
	l := lab.NewT(t, lab.Config{Prefix: "tshcmp"})
	h1, h2p, rp, slowp := uint16(8081), uint16(8082), uint16(6379), uint16(8083)
	differ := `location /fail/ { return 500; }
		location /gone/ { return 404; }`
	startNginxWith(t, l.Prod, netip.AddrPortFrom(lab.ProdV4, h1), nginxOptions{keepalive: time.Second})
	shadow1 := startNginxWith(t, l.Shadow, netip.AddrPortFrom(lab.ShadowV4, h1), nginxOptions{keepalive: time.Second, locations: differ})
	startNginxWith(t, l.Prod, netip.AddrPortFrom(lab.ProdV4, h2p), nginxOptions{keepalive: time.Second, http2: true})
	shadow2 := startNginxWith(t, l.Shadow, netip.AddrPortFrom(lab.ShadowV4, h2p), nginxOptions{keepalive: time.Second, http2: true, locations: differ})
	startRedis(t, l.Prod, netip.AddrPortFrom(lab.ProdV4, rp))
	startRedis(t, l.Shadow, netip.AddrPortFrom(lab.ShadowV4, rp))
	startNginxWith(t, l.Prod, netip.AddrPortFrom(lab.ProdV4, slowp), nginxOptions{keepalive: time.Second})
	ln, err := l.Shadow.Listen("tcp", netip.AddrPortFrom(lab.ShadowV4, slowp).String())
	if err != nil {
		t.Fatal(err)
	}
	slow := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/slow/") {
			time.Sleep(40 * time.Millisecond)
		}
		w.Write([]byte("ok\n"))
	})}
	go slow.Serve(ln)
	t.Cleanup(func() { slow.Close() })
	// The data drifted: on the shadow, cart is a list.
	for ns, cmd := range map[*lab.NS][]string{l.Prod: {"SET", "cart", "apple"}, l.Shadow: {"RPUSH", "cart", "apple"}} {
		addr := lab.ProdV4
		if ns == l.Shadow {
			addr = lab.ShadowV4
		}
		c, err := dialRESP(ns, netip.AddrPortFrom(addr, rp))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.do(cmd...); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}

	maps := []compare.MapConfig{{Name: "web", Protocol: compare.Auto}, {Name: "web-h2", Protocol: compare.Auto},
		{Name: "cache", Protocol: compare.Auto}, {Name: "slow", Protocol: compare.HTTP1}}
	cmp, err := compare.New(compare.Config{Maps: maps, Workers: 1, QueueLen: 1024})
	if err != nil {
		t.Fatal(err)
	}
	rec := cmp.Recorder(0)
	ports := []uint16{h1, h2p, rp, slowp}
	pair := func(m uint16, req []byte) {
		t.Helper()
		var p compare.Pair
		p.Map = m
		p.SetRequest(req)
		for side, addr := range map[*compare.Response]netip.Addr{&p.Prod: lab.ProdV4, &p.Shadow: lab.ShadowV4} {
			head, sent, first, o := exchange(l.Prod, netip.AddrPortFrom(addr, ports[m]), req, compare.DefaultPrefix)
			side.HeadLen = uint16(copy(side.Head[:], head))
			side.Outcome, side.Sent, side.FirstByte = o, sent, first
		}
		if !rec.Put(&p) {
			t.Fatal("the ring is full")
		}
	}
	want := map[string]int{}
	for i := range 60 {
		path := fmt.Sprintf("/item/%d", i)
		switch i % 6 {
		case 1:
			path = fmt.Sprintf("/fail/%d", i)
		case 4:
			path = fmt.Sprintf("/gone/%d", i)
		}
		want[path[:5]]++
		pair(0, []byte("GET "+path+" HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n"))
		pair(1, h2Request(path))
	}
	resp := func(args ...string) []byte {
		var b bytes.Buffer
		fmt.Fprintf(&b, "*%d\r\n", len(args))
		for _, a := range args {
			fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
		}
		return b.Bytes()
	}
	for i := range 10 {
		pair(2, resp("GET", "cart"))
		pair(2, resp("INCR", fmt.Sprint("hits", i)))
	}
	for i := range 30 {
		path := fmt.Sprintf("/item/%d", i)
		if i%3 == 0 {
			path = fmt.Sprintf("/slow/%d", i)
		}
		pair(3, []byte("GET "+path+" HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n"))
	}
	done, stop := context.WithCancel(context.Background())
	stop()
	cmp.Run(done)
	r := cmp.Snapshot()
	var text bytes.Buffer
	compare.WriteText(&text, r)
	t.Logf("report:\n%s", text.String())

	mismatch := func(m compare.MapReport, prod, shadow string) int {
		for _, x := range m.Mismatches {
			if x.Prod == prod && x.Shadow == shadow {
				return int(x.Count)
			}
		}
		return 0
	}
	for i, n := range []*nginx{shadow1, shadow2} {
		m := r.Maps[i]
		fails, gones := nginxStatuses(t, n, "/fail/"), nginxStatuses(t, n, "/gone/")
		if m.Requests != 60 || fails["500"] != want["/fail"] || gones["404"] != want["/gone"] {
			t.Fatalf("%s: %d requests; the shadow logged /fail/ %v, /gone/ %v; sent %v", m.Map, m.Requests, fails, gones, want)
		}
		if got := mismatch(m, "200", "500"); got != fails["500"] {
			t.Errorf("%s: 200 → 500 counted %d, the shadow's log says %d", m.Map, got, fails["500"])
		}
		if got := mismatch(m, "200", "404"); got != gones["404"] {
			t.Errorf("%s: 200 → 404 counted %d, the shadow's log says %d", m.Map, got, gones["404"])
		}
		if len(m.Mismatches) != 2 || m.Prod.Classes["200"] != 60 {
			t.Errorf("%s: mismatches %v, prod classes %v", m.Map, m.Mismatches, m.Prod.Classes)
		}
	}
	if r.Maps[0].Protocol != "http" || r.Maps[1].Protocol != "http2" || r.Maps[2].Protocol != "redis" {
		t.Errorf("detected %s, %s, %s", r.Maps[0].Protocol, r.Maps[1].Protocol, r.Maps[2].Protocol)
	}
	if top := r.Maps[1].TopDivergent; len(top) == 0 || !strings.HasPrefix(top[0].Request, "GET /") {
		t.Errorf("h2 top divergent %+v: want GET and the path", top)
	}
	cache := r.Maps[2]
	if cache.Shadow.Classes["-WRONGTYPE"] != 10 || mismatch(cache, "value", "-WRONGTYPE") != 10 || len(cache.Mismatches) != 1 {
		t.Errorf("cache: shadow classes %v, mismatches %v", cache.Shadow.Classes, cache.Mismatches)
	}
	if len(cache.TopDivergent) != 1 || cache.TopDivergent[0].Request != "GET" {
		t.Errorf("cache top divergent %+v", cache.TopDivergent)
	}
	sl := r.Maps[3]
	if len(sl.Mismatches) != 0 || sl.Shadow.LatencyMS.P99 < 30 || sl.Shadow.LatencyMS.P99 <= sl.Prod.LatencyMS.P99 {
		t.Errorf("slow: mismatches %v, p99 prod %.3fms shadow %.3fms: want the shadow's above, at the 40ms delay",
			sl.Mismatches, sl.Prod.LatencyMS.P99, sl.Shadow.LatencyMS.P99)
	}
}
