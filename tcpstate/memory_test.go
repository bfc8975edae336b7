package tcpstate

import (
	"net/netip"
	"runtime"
	"testing"
)

// TestIdleSessionMemory holds 100,000 established, idle sessions and checks
// what each costs on the heap: the session, its two table entries and its
// timer slot — at most 1 KiB (the per-session target), with no buffer
// held once the handshake is done.
func TestIdleSessionMemory(t *testing.T) {
	const n = 100000 // the target: 100k sessions held
	h := newHarness(t, func(c *Config) { c.MaxSessions = 2 * n })
	h.rec.events = nil
	open := func(i int) {
		h.client = netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), uint16(1024+i/65536))
		h.open(nil)
		syn := h.sent() // the forged endpoint may differ from the pool's first choice
		if len(syn) != 1 {
			t.Fatalf("session %d: sent %d packets for its SYN", i, len(syn))
		}
		h.replyTo(syn[0].src, fSYN|fACK, tShadowISN, tISN+1, 65535, 0, nil)
		h.rec.events = h.rec.events[:0]
	}
	open(0) // warm up pools and maps' first buckets
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := 1; i <= n; i++ {
		open(i)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if h.w.Sessions() != n+1 {
		t.Fatalf("%d sessions held, want %d", h.w.Sessions(), n+1)
	}
	if h.ctr.buffered.Load() != 0 {
		t.Fatalf("idle established sessions hold %d buffered bytes", h.ctr.buffered.Load())
	}
	per := float64(after.HeapAlloc-before.HeapAlloc) / n
	t.Logf("%.0f bytes of heap per idle session", per)
	if raceEnabled {
		t.Skip("the race detector pads allocations; measured without it by make bench-go-smoke and go test")
	}
	if per > 1024 {
		t.Fatalf("an idle session costs %.0f bytes of heap, want at most 1 KiB", per)
	}
	runtime.KeepAlive(h)
}
