package tunnel

import (
	"bytes"
	"testing"
)

// BenchmarkSeal: one 1400-byte packet sealed into its datagram.
func BenchmarkSeal(b *testing.B) {
	s, _, _, _ := pair(b, "bench")
	inner := bytes.Repeat([]byte{0x45}, 1400)
	buf := make([]byte, MaxDatagram)
	b.SetBytes(int64(len(inner)))
	b.ReportAllocs()
	for b.Loop() {
		s.Seal(buf, TypePacket, inner)
	}
}

// BenchmarkOpen: one 1400-byte datagram parsed, checked against the
// window and opened (each a fresh counter, as received).
func BenchmarkOpen(b *testing.B) {
	s, o, _, _ := pair(b, "bench")
	inner := bytes.Repeat([]byte{0x45}, 1400)
	sealed := make([][]byte, 1024)
	for i := range sealed {
		sealed[i] = s.Seal(make([]byte, len(inner)+Overhead), TypePacket, inner)
	}
	work := make([]byte, len(inner)+Overhead)
	b.SetBytes(int64(len(inner)))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if i == len(sealed) {
			// Fresh counters for the next round, sealed outside the timer.
			b.StopTimer()
			for j := range sealed {
				sealed[j] = s.Seal(sealed[j][:cap(sealed[j])], TypePacket, inner)
			}
			i = 0
			b.StartTimer()
		}
		copy(work, sealed[i])
		i++
		if _, v := Parse(work); v != OK {
			b.Fatal(v)
		}
		if _, v := o.Open(work); v != OK {
			b.Fatal(v)
		}
	}
}
