package compare

import (
	"testing"
	"time"
)

// BenchmarkPut is the datapath's cost of handing a pair over.
func BenchmarkPut(b *testing.B) {
	c := newTestComparer(b, Config{QueueLen: 1024})
	r := c.Recorder(0)
	p := mkPair(0, get("/"), ok200, ok200, time.Millisecond, time.Millisecond)
	var q Pair
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if !r.Put(&p) {
			r.next(&q) // keep the ring from filling: this measures a take, not a drop
			r.Put(&p)
		}
	}
}

// BenchmarkConsume is the consumer's cost per pair: classify both sides,
// aggregate, and for a mismatch summarize the request (divergence log
// off; it is bounded to DefaultLogPerSecond lines a second anyway).
func BenchmarkConsume(b *testing.B) {
	h2resp := string(h2frame(h2Headers, 4, 1, []byte{0x08, 0x03, '4', '1', '8'}))
	for _, bc := range []struct {
		name  string
		proto Protocol
		p     Pair
	}{
		{"http1-match", HTTP1, mkPair(0, get("/"), ok200, ok200, time.Millisecond, 2*time.Millisecond)},
		{"http1-mismatch", HTTP1, mkPair(0, get("/fail"), ok200, err500, time.Millisecond, 2*time.Millisecond)},
		{"http2-literal", HTTP2, mkPair(0, "", h2resp, h2resp, time.Millisecond, 2*time.Millisecond)},
		{"redis", Redis, mkPair(0, "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", "$1\r\nv\r\n", "$1\r\nv\r\n", time.Millisecond, time.Millisecond)},
		{"postgres-error", Postgres, mkPair(0, "Q\x00\x00\x00\x10SELECT 1\x00",
			"E\x00\x00\x00\x16SERROR\x00C42P01\x00\x00", "E\x00\x00\x00\x16SERROR\x00C42P01\x00\x00", time.Millisecond, time.Millisecond)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c := newTestComparer(b, Config{Maps: []MapConfig{{Name: "m", Protocol: bc.proto}}})
			b.ReportAllocs()
			for b.Loop() {
				c.consume(&bc.p)
			}
		})
	}
}
