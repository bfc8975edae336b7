package rewrite

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
)

func BenchmarkSum(b *testing.B) {
	data := randBytes(rand.New(rand.NewPCG(61, 62)), 1460)
	for _, n := range []int{64, 512, 1460} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(n))
			var s uint16
			for b.Loop() {
				s = Sum(data[:n], s)
			}
		})
	}
}

// benchPacket is a full-sized data packet with timestamps.
func benchPacket(b *testing.B, v6 bool) []byte {
	s := v4Spec()
	if v6 {
		s = v6Spec()
	}
	s.payload = randBytes(rand.New(rand.NewPCG(63, 64)), 1460)
	return s.build(b)
}

func BenchmarkDecode(b *testing.B) {
	for _, v6 := range []bool{false, true} {
		b.Run(map[bool]string{false: "v4", true: "v6"}[v6], func(b *testing.B) {
			pkt := benchPacket(b, v6)
			b.ReportAllocs()
			var p Packet
			for b.Loop() {
				if err := p.Decode(pkt); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkSetDstAck(b *testing.B) {
	pkt := benchPacket(b, false)
	var p Packet
	if err := p.Decode(pkt); err != nil {
		b.Fatal(err)
	}
	addrs := [2]netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		p.SetDst(addrs[i&1], 8080)
		p.SetAck(uint32(i))
		i++
	}
}

func BenchmarkSetTimestamps(b *testing.B) {
	pkt := benchPacket(b, false)
	var p Packet
	if err := p.Decode(pkt); err != nil {
		b.Fatal(err)
	}
	var o Options
	ParseOptions(p.TCP(), &o)
	b.ReportAllocs()
	i := uint32(0)
	for b.Loop() {
		p.SetTimestamps(&o, i, i+1)
		i++
	}
}

func BenchmarkRecomputeChecksums(b *testing.B) {
	pkt := benchPacket(b, false)
	var p Packet
	if err := p.Decode(pkt); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	for b.Loop() {
		p.RecomputeChecksums()
	}
}

func BenchmarkSegmentPut(b *testing.B) {
	for _, tc := range []struct {
		name    string
		payload int
	}{{"ack", 0}, {"1460", 1460}} {
		b.Run(tc.name, func(b *testing.B) {
			seg := Segment{
				Src: netip.MustParseAddrPort("10.0.0.1:40000"), Dst: netip.MustParseAddrPort("10.0.0.2:80"),
				Seq: 1, Ack: 2, Flags: FlagACK, Window: 501,
				Options: AppendTimestamps(nil, 3, 4), Payload: make([]byte, tc.payload),
			}
			buf := make([]byte, 1600)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := seg.Put(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkPoolMap(b *testing.B) {
	pool, err := NewPool([]netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")}, 1)
	if err != nil {
		b.Fatal(err)
	}
	a := netip.MustParseAddr("203.0.113.9")
	b.ReportAllocs()
	for b.Loop() {
		a = pool.Map(a)
	}
}
