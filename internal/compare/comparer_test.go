package compare

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"
)

// TestRecorderPutAlloc: handing a pair over allocates nothing, whether
// the ring takes it or is full and drops it.
func TestRecorderPutAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	c := newTestComparer(t, Config{QueueLen: 256})
	r := c.Recorder(0)
	p := mkPair(0, get("/"), ok200, ok200, time.Millisecond, time.Millisecond)
	if n := testing.AllocsPerRun(1000, func() { r.Put(&p) }); n != 0 {
		t.Fatalf("Put: %v allocations", n)
	}
	if r.Dropped() == 0 {
		t.Fatal("the ring never filled: the drop path was not measured")
	}
	var nilRec *Recorder
	if n := testing.AllocsPerRun(100, func() { nilRec.Put(&p) }); n != 0 || nilRec.Put(&p) {
		t.Fatalf("nil Recorder: %v allocations", n)
	}
}

// TestRecorderDropsWhenFull: a full ring refuses and counts, and gives
// what it took in order.
func TestRecorderDropsWhenFull(t *testing.T) {
	c := newTestComparer(t, Config{QueueLen: 3}) // rounded up to 4
	r := c.Recorder(0)
	var took []uint16
	for i := range 7 {
		p := Pair{RequestLen: uint16(i)}
		if r.Put(&p) {
			took = append(took, uint16(i))
		}
	}
	if !slices.Equal(took, []uint16{0, 1, 2, 3}) || r.Dropped() != 3 || c.Dropped() != 3 {
		t.Fatalf("took %v, dropped %d", took, r.Dropped())
	}
	var p Pair
	for _, want := range took {
		if !r.next(&p) || p.RequestLen != want {
			t.Fatalf("next: %d, want %d", p.RequestLen, want)
		}
	}
	if r.next(&p) {
		t.Fatal("an empty ring gave a pair")
	}
	if q := (Pair{}); !r.Put(&q) {
		t.Fatal("a drained ring refused")
	}
	if c.Recorder(1) != nil || c.Recorder(-1) != nil {
		t.Fatal("a worker out of range got a Recorder")
	}
}

// TestRecorderConcurrent runs one producer against the consumer: every
// pair is either consumed, in order, or counted as dropped.
func TestRecorderConcurrent(t *testing.T) {
	c := newTestComparer(t, Config{QueueLen: 64})
	r := c.Recorder(0)
	const n = 20000
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range n {
			p := Pair{}
			p.Prod.Sent = int64(i)
			r.Put(&p)
		}
	}()
	got, last := 0, int64(-1)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	var p Pair
	for {
		if r.next(&p) {
			if p.Prod.Sent <= last {
				t.Fatalf("pair %d after %d", p.Prod.Sent, last)
			}
			last = p.Prod.Sent
			got++
			continue
		}
		select {
		case <-done:
			for r.next(&p) {
				got++
			}
			if uint64(got)+r.Dropped() != n {
				t.Fatalf("consumed %d + dropped %d != %d", got, r.Dropped(), n)
			}
			return
		default:
		}
	}
}

// TestComparerAggregates checks every number of the sample's snapshot
// against how it was built.
func TestComparerAggregates(t *testing.T) {
	r := sampleComparer(t).Snapshot()
	if r.Tool != ReportTool || len(r.Maps) != 2 {
		t.Fatalf("report %+v", r)
	}
	web := r.Maps[0]
	if web.Map != "web" || web.Protocol != "http" || web.Requests != 100 {
		t.Fatalf("web: %s %s %d", web.Map, web.Protocol, web.Requests)
	}
	wantProd := map[string]uint64{"200": 100}
	wantShadow := map[string]uint64{"200": 80, "500": 10, "404": 5, "timeout": 3, "reset": 2}
	if fmt.Sprint(web.Prod.Classes) != fmt.Sprint(wantProd) || fmt.Sprint(web.Shadow.Classes) != fmt.Sprint(wantShadow) {
		t.Fatalf("classes prod %v shadow %v", web.Prod.Classes, web.Shadow.Classes)
	}
	wantMM := []Mismatch{{"200", "500", 10}, {"200", "404", 5}, {"200", "timeout", 3}, {"200", "reset", 2}}
	if !slices.Equal(web.Mismatches, wantMM) {
		t.Fatalf("mismatches %v, want %v", web.Mismatches, wantMM)
	}
	if web.Matched["200"] != 80 || len(web.Matched) != 1 {
		t.Fatalf("matched %v", web.Matched)
	}
	if web.Prod.Answered != 100 || web.Shadow.Answered != 95 {
		t.Fatalf("answered prod %d shadow %d", web.Prod.Answered, web.Shadow.Answered)
	}
	// Quantiles are read from buckets a quarter wide at most.
	near := func(name string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > want/4 {
			t.Errorf("%s = %.3fms, want %.3fms ± 25%%", name, got, want)
		}
	}
	near("prod p50", web.Prod.LatencyMS.P50, 1)
	near("prod p99", web.Prod.LatencyMS.P99, 1)
	near("shadow p50", web.Shadow.LatencyMS.P50, 4)
	near("shadow p99", web.Shadow.LatencyMS.P99, 40) // the 10 /fail of 95 answers
	near("shadow max", web.Shadow.LatencyMS.Max, 40)
	if len(web.TopDivergent) != 4 || web.TopDivergent[0].Request != "GET /fail HTTP/1.1" ||
		web.TopDivergent[0].Count != 10 || web.TopDivergent[0].Shadow != "500" || web.TopDivergent[1].Request != "GET /gone HTTP/1.1" {
		t.Fatalf("top divergent %+v", web.TopDivergent)
	}
	near("/fail shadow ms", web.TopDivergent[0].ShadowMS, 40)
	var sum uint64
	for _, b := range web.Shadow.Histogram {
		sum += b.Count
	}
	if sum != 95 {
		t.Fatalf("shadow histogram holds %d", sum)
	}
	cache := r.Maps[1]
	if cache.Protocol != "redis" || cache.Requests != 4 || cache.Shadow.Classes["-ERR"] != 1 ||
		cache.Prod.Classes["ok"] != 2 || cache.Prod.Classes["value"] != 2 {
		t.Fatalf("cache %+v", cache)
	}
	if len(cache.TopDivergent) != 1 || cache.TopDivergent[0].Request != "FLUSHALL" {
		t.Fatalf("cache top divergent %+v", cache.TopDivergent)
	}
}

// TestComparerAutoDetect: an auto map learns HTTP/2 from the preface and
// keeps it for the HEADERS-only requests after it; a server-first map
// learns MySQL from the greeting; one with nothing to tell stays auto and
// counts answers.
func TestComparerAutoDetect(t *testing.T) {
	c := newTestComparer(t, Config{Maps: []MapConfig{{Name: "h2"}, {Name: "db"}, {Name: "odd"}}})
	h2req := h2Preface + string(h2frame(h2Headers, 5, 1, []byte{0x82, 0x84}))
	headers := func(stream uint32, status byte) string { return string(h2frame(h2Headers, 4, stream, []byte{status})) }
	greet := "\x0a\x00\x00\x00\x0a8.0.36\x00"
	err1146 := "\x09\x00\x00\x01\xff\x7a\x04#42S02"
	ms := time.Millisecond
	feed(t, c,
		mkPair(2, "\x16\x03\x01", "\x16\x03\x03", "\x16\x03\x03", ms, ms),
		mkPair(0, h2req, headers(1, 0x88), headers(1, 0x88), ms, ms),
		mkPair(0, string(h2frame(h2Headers, 5, 3, []byte{0x82, 0x84})), headers(3, 0x88), headers(3, 0x8e), ms, ms),
		mkPair(1, "", greet, greet, ms, ms),
		mkPair(1, "\x15\x00\x00\x00\x03SELECT * FROM missing", "\x01\x00\x00\x01\x01", err1146, ms, ms),
	)
	r := c.Snapshot()
	if r.Maps[0].Protocol != "http2" || r.Maps[0].Shadow.Classes["500"] != 1 || r.Maps[0].Prod.Classes["200"] != 2 {
		t.Fatalf("h2 %+v", r.Maps[0])
	}
	if len(r.Maps[0].TopDivergent) != 1 || r.Maps[0].TopDivergent[0].Request != "GET /" {
		t.Fatalf("h2 divergent %+v", r.Maps[0].TopDivergent)
	}
	if r.Maps[1].Protocol != "mysql" || r.Maps[1].Prod.Classes["greeting"] != 1 || r.Maps[1].Shadow.Classes["1146"] != 1 ||
		r.Maps[1].Prod.Classes["rows"] != 1 {
		t.Fatalf("db %+v", r.Maps[1])
	}
	if r.Maps[2].Protocol != "auto" || r.Maps[2].Prod.Classes["answered"] != 1 {
		t.Fatalf("odd %+v", r.Maps[2])
	}
}

// TestComparerBounds: distinct classes beyond MaxClasses count as
// "other"; divergent summaries stay at MaxTopDivergent and a frequent one
// arriving late still reaches the top; a pair naming no map is counted.
func TestComparerBounds(t *testing.T) {
	c := newTestComparer(t, Config{Maps: []MapConfig{{Name: "pg", Protocol: Postgres}}})
	var ps []Pair
	for i := range 200 {
		state := fmt.Sprintf("%05d", i)
		body := "SERROR\x00C" + state + "\x00\x00"
		n := len(body) + 4
		e := string([]byte{'E', 0, 0, byte(n >> 8), byte(n)}) + body
		ps = append(ps, mkPair(0, fmt.Sprintf("Q\x00\x00\x00\x10SELECT %d\x00", i), "C\x00\x00\x00\x0dSELECT 1\x00", e, 0, 0))
	}
	for range 100 {
		ps = append(ps, mkPair(0, "Q\x00\x00\x00\x10DELETE FROM t\x00", "C\x00\x00\x00\x0dDELETE 1\x00", "\x00", 0, 0))
	}
	bad := mkPair(7, "x", "y", "z", 0, 0)
	ps = append(ps, bad)
	feed(t, c, ps...)
	r := c.Snapshot().Maps[0]
	if len(r.Shadow.Classes) != MaxClasses+1 || r.Shadow.Classes[ClassOther] != 200-MaxClasses+100 { // the DELETEs' garbage came after the slots were taken
		t.Fatalf("%d shadow classes, other %d", len(r.Shadow.Classes), r.Shadow.Classes[ClassOther])
	}
	if len(r.TopDivergent) != 2 || r.TopDivergent[0].Request != "SELECT" || r.TopDivergent[0].Count != 200 ||
		r.TopDivergent[1].Request != "DELETE" {
		t.Fatalf("pg top %+v", r.TopDivergent)
	}

	h := newTestComparer(t, Config{})
	ps = ps[:0]
	for i := range 500 {
		ps = append(ps, mkPair(0, get(fmt.Sprintf("/p%d", i)), ok200, err500, 0, 0))
	}
	for range 100 {
		ps = append(ps, mkPair(0, get("/late"), ok200, err500, 0, 0))
	}
	feed(t, h, ps...)
	h.mu.Lock()
	kept := len(h.maps[0].divergent)
	h.mu.Unlock()
	if kept != MaxTopDivergent {
		t.Fatalf("%d divergent summaries kept", kept)
	}
	if top := h.Snapshot().Maps[0].TopDivergent; len(top) != topShown || top[0].Request != "GET /late HTTP/1.1" || top[0].Count < 100 {
		t.Fatalf("top %+v", top)
	}
	if c.badMap.Load() != 1 {
		t.Fatalf("bad map %d", c.badMap.Load())
	}
}

func TestNewValidates(t *testing.T) {
	for name, cfg := range map[string]Config{
		"no maps":     {Workers: 1},
		"no workers":  {Maps: []MapConfig{{Name: "a"}}},
		"dup names":   {Maps: []MapConfig{{Name: "a"}, {Name: "a"}}, Workers: 1},
		"empty name":  {Maps: []MapConfig{{}}, Workers: 1},
		"bad proto":   {Maps: []MapConfig{{Name: "a", Protocol: Unknown}}, Workers: 1},
		"huge queue":  {Maps: []MapConfig{{Name: "a"}}, Workers: 1, QueueLen: 1 << 20},
		"tiny log":    {Maps: []MapConfig{{Name: "a"}}, Workers: 1, Divergence: LogConfig{Path: t.TempDir() + "/d", MaxBytes: 10}},
		"log in void": {Maps: []MapConfig{{Name: "a"}}, Workers: 1, Divergence: LogConfig{Path: "/nonexistent/dir/d"}},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// TestPairSize keeps the record's size in view: every Recorder holds
// QueueLen of them, so Workers × QueueLen × this is the rings' memory.
func TestPairSize(t *testing.T) {
	n := unsafe.Sizeof(Pair{})
	if n > 800 {
		t.Fatalf("a Pair is %d bytes: the rings' memory grows with it", n)
	}
	t.Logf("a Pair is %d bytes; a default ring %d KiB", n, n*DefaultQueueLen>>10)
}

// TestAppendAlloc: filling a pair packet by packet allocates nothing.
func TestAppendAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	var p Pair
	pkt := []byte("HTTP/1.1 200 OK\r\nServer: nginx\r\n")
	if n := testing.AllocsPerRun(1000, func() {
		p.AppendRequest(pkt)
		p.Prod.Append(pkt, DefaultPrefix, 1)
		p.Shadow.Append(pkt, MaxPrefix+100, 2)
	}); n != 0 {
		t.Fatalf("Append: %v allocations", n)
	}
	if p.Prod.HeadLen != DefaultPrefix || p.Shadow.HeadLen != MaxPrefix || p.RequestLen != RequestHeadLen {
		t.Fatalf("heads %d %d %d: not held at their limits", p.Prod.HeadLen, p.Shadow.HeadLen, p.RequestLen)
	}
}

// TestComparerSlower: a request both sides answer alike counts as slower
// on the shadow only past SlowerMargin and twice prod's time; the report
// names those requests, and the text report prints them.
func TestComparerSlower(t *testing.T) {
	c := newTestComparer(t, Config{})
	ms := time.Millisecond
	var ps []Pair
	for range 50 {
		ps = append(ps, mkPair(0, get("/"), ok200, ok200, ms, 3*ms)) // later, within the margin
	}
	for range 7 {
		ps = append(ps, mkPair(0, get("/slow"), ok200, ok200, 2*ms, 45*ms))
	}
	for range 3 {
		ps = append(ps, mkPair(0, get("/heavy"), ok200, ok200, 20*ms, 35*ms)) // past the margin, not twice
	}
	feed(t, c, ps...)
	web := c.Snapshot().Maps[0]
	if web.Slower != 7 || len(web.TopSlower) != 1 || web.TopSlower[0].Request != "GET /slow HTTP/1.1" || web.TopSlower[0].Count != 7 {
		t.Fatalf("slower %d, top %+v: want the 7 of /slow", web.Slower, web.TopSlower)
	}
	if len(web.TopDivergent) != 0 || len(web.Mismatches) != 0 {
		t.Fatalf("slower requests counted as divergent: %+v %+v", web.TopDivergent, web.Mismatches)
	}
	var b strings.Builder
	if err := WriteText(&b, c.Snapshot()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "top slower requests") || !strings.Contains(b.String(), "GET /slow HTTP/1.1") {
		t.Fatalf("text report does not name the slower request:\n%s", b.String())
	}
}
