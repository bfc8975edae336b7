package rewrite

import (
	"net/netip"
	"testing"
)

// TestZeroAllocs proves the per-packet path allocates nothing.
func TestZeroAllocs(t *testing.T) {
	if testing.CoverMode() != "" {
		t.Skip("coverage instrumentation may allocate")
	}
	pkts := map[string][]byte{"v4": v4Spec().build(t), "v6": v6Spec().build(t)}
	addrs := map[string]netip.Addr{"v4": netip.MustParseAddr("100.64.1.2"), "v6": netip.MustParseAddr("fd00::1:2")}
	pool := mustPool(t, 1, "100.64.0.0/10", "fd00::/64")
	seg := Segment{
		Src: netip.MustParseAddrPort("10.0.0.1:1000"), Dst: netip.MustParseAddrPort("10.0.0.2:80"),
		Flags: FlagACK, Options: AppendTimestamps(nil, 1, 2), Payload: make([]byte, 100),
	}
	segBuf := make([]byte, 1500)
	var sink struct {
		tuple Tuple
		addr  netip.Addr
		n     int
		ok    bool
		sum   uint16
		hash  uint64
	}
	for fam, b := range pkts {
		var p Packet
		var o Options
		if err := p.Decode(b); err != nil {
			t.Fatal(err)
		}
		a := addrs[fam]
		for _, tc := range []struct {
			name string
			f    func()
		}{
			{"Decode", func() { _ = p.Decode(b) }},
			{"DecodeHeader", func() { _ = p.DecodeHeader(b) }},
			{"SetSrc", func() { sink.ok = p.SetSrc(a, 1234) }},
			{"SetDst", func() { sink.ok = p.SetDst(a, 80) }},
			{"SetSeq", func() { p.SetSeq(1) }},
			{"SetAck", func() { p.SetAck(2) }},
			{"SetWindow", func() { p.SetWindow(3) }},
			{"SetFlags", func() { p.SetFlags(FlagACK) }},
			{"ParseOptions", func() { sink.ok = ParseOptions(p.TCP(), &o) }},
			{"SetTimestamps", func() { sink.ok = p.SetTimestamps(&o, 4, 5) }},
			{"SetMSS", func() { sink.ok = p.SetMSS(&o, 1400) }},
			{"ClearOptions", func() { sink.n = p.ClearOptions(OptSACKPermitted, OptSACK) }},
			{"RecomputeChecksums", func() { p.RecomputeChecksums() }},
			{"ChecksumValid", func() { sink.ok = p.ChecksumValid() }},
			{"Tuple", func() { sink.tuple = p.Tuple() }},
			{"TupleOf", func() {
				sink.tuple = TupleOf(netip.AddrPortFrom(a, 1), netip.AddrPortFrom(a, 2)).Reverse()
			}},
			{"Pool.Map", func() { sink.addr = pool.Map(a) }},
			{"Pool.MapCopy", func() { sink.addr = pool.MapCopy(a, 7) }},
			{"HashAddrPort", func() { sink.hash = HashAddrPort(a.As16(), 1, 2) }},
			{"Sum", func() { sink.sum = Sum(b, 0) }},
			{"Segment.Put", func() { sink.n, _ = seg.Put(segBuf) }},
		} {
			if n := testing.AllocsPerRun(100, tc.f); n != 0 {
				t.Errorf("%s %s: %v allocations per run, want 0", fam, tc.name, n)
			}
		}
	}
	_ = sink
}
