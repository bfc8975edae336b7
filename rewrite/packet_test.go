package rewrite

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// checkDecoded verifies a Decode or DecodeHeader result against the model.
// whole is false for a header-only buffer.
func checkDecoded(tb testing.TB, p *Packet, s *pktSpec, whole bool) {
	tb.Helper()
	hl, tl := s.ipHeaderLen(), s.tcpHeaderLen()
	if p.IsV6() != s.v6 || p.IPHeaderLen() != hl || p.TCP().HeaderLen() != tl || len(p.Headers()) != hl+tl {
		tb.Fatalf("decoded v6=%v iphl=%d tcphl=%d headers=%d, want %v %d %d %d",
			p.IsV6(), p.IPHeaderLen(), p.TCP().HeaderLen(), len(p.Headers()), s.v6, hl, tl, hl+tl)
	}
	if p.PayloadLen() != len(s.payload) {
		tb.Fatalf("PayloadLen = %d, want %d", p.PayloadLen(), len(s.payload))
	}
	wantPayload := s.payload
	if !whole {
		wantPayload = nil
	}
	if !bytes.Equal(p.Payload(), wantPayload) {
		tb.Fatalf("Payload has %d bytes, want %d", len(p.Payload()), len(wantPayload))
	}
	if p.SrcAddr() != s.src || p.DstAddr() != s.dst {
		tb.Fatalf("addresses %v->%v, want %v->%v", p.SrcAddr(), p.DstAddr(), s.src, s.dst)
	}
	wantTuple := TupleOf(netip.AddrPortFrom(s.src, s.sport), netip.AddrPortFrom(s.dst, s.dport))
	if p.Tuple() != wantTuple {
		tb.Fatalf("Tuple = %v, want %v", p.Tuple(), wantTuple)
	}
	tcp := p.TCP()
	if tcp.SrcPort() != s.sport || tcp.DstPort() != s.dport || tcp.Seq() != s.seq || tcp.Ack() != s.ack ||
		tcp.Flags() != s.flags || tcp.Window() != s.window || !bytes.Equal(tcp.Options(), s.rawOptions()) {
		tb.Fatalf("TCP getters disagree with the model")
	}
	checkParsedOptions(tb, tcp, s)
}

// checkParsedOptions verifies ParseOptions against the model's options.
func checkParsedOptions(tb testing.TB, tcp TCP, s *pktSpec) {
	tb.Helper()
	var want Options
	for _, o := range s.opts {
		switch o.kind {
		case OptMSS:
			want.MSS = binary.BigEndian.Uint16(o.data)
		case OptWindowScale:
			want.WindowScale = o.data[0]
		case OptSACKPermitted:
			want.SACKPermitted = true
		case OptSACK:
			want.SACK = true
		case OptTimestamps:
			want.TSVal = binary.BigEndian.Uint32(o.data)
			want.TSEcr = binary.BigEndian.Uint32(o.data[4:])
		}
	}
	var got Options
	if !ParseOptions(tcp, &got) {
		tb.Fatalf("ParseOptions(% x) = false", tcp.Options())
	}
	if got.MSS != want.MSS || got.WindowScale != want.WindowScale || got.SACKPermitted != want.SACKPermitted ||
		got.SACK != want.SACK || got.TSVal != want.TSVal || got.TSEcr != want.TSEcr ||
		got.HasMSS() != (s.find(OptMSS) >= 0) || got.HasWindowScale() != (s.find(OptWindowScale) >= 0) ||
		got.HasTimestamps() != (s.find(OptTimestamps) >= 0) {
		tb.Fatalf("ParseOptions(% x) = %+v, want %+v", tcp.Options(), got, want)
	}
}

// optOffset returns the offset of the first option of kind k from the start
// of the TCP header, or -1.
func (s *pktSpec) optOffset(k uint8) int {
	off := TCPMinHeaderLen
	for _, o := range s.opts {
		if o.kind == k {
			return off
		}
		off += o.len()
	}
	return -1
}

// TestSettersMatchRecomputation applies random sequences of setters to
// random packets built by gopacket, and after every setter checks the
// packet field by field and byte by byte against gopacket's serialization
// of an independently updated model, including both checksums, which must
// equal a recomputation from scratch exactly. A header-only copy decoded
// with DecodeHeader gets the same setters and must keep the same headers.
func TestSettersMatchRecomputation(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	n := 1500
	if testing.Short() {
		n = 200
	}
	var cov struct{ tsOdd, tsEven, v4opts, v6hbh, noPayload, padded, cleared int }
	for i := range n {
		s := randSpec(r)
		pkt := s.build(t)
		checkAgainstSpec(t, pkt, s) // the model and gopacket agree
		var pad []byte
		if r.IntN(3) == 0 {
			pad = randBytes(r, 1+r.IntN(20))
			cov.padded++
		}
		buf := append(bytes.Clone(pkt), pad...)
		var p, h Packet
		if err := p.Decode(buf); err != nil {
			t.Fatalf("packet %d: Decode: %v", i, err)
		}
		if !bytes.Equal(p.Bytes(), pkt) {
			t.Fatalf("packet %d: Bytes() has %d bytes, want %d (link padding must be cut)", i, len(p.Bytes()), len(pkt))
		}
		checkDecoded(t, &p, s, true)
		if !p.ChecksumValid() {
			t.Fatalf("packet %d: ChecksumValid() = false on gopacket's packet", i)
		}
		hdr := bytes.Clone(pkt[:s.ipHeaderLen()+s.tcpHeaderLen()])
		if err := h.DecodeHeader(hdr); err != nil {
			t.Fatalf("packet %d: DecodeHeader: %v", i, err)
		}
		checkDecoded(t, &h, s, false)
		if s.v6 && s.hbh > 0 {
			cov.v6hbh++
		}
		if len(s.ipOpts) > 0 {
			cov.v4opts++
		}
		if len(s.payload) == 0 {
			cov.noPayload++
		}

		var history []string
		for range 12 {
			op := applyRandomSetter(t, r, []*Packet{&p, &h}, s)
			history = append(history, op)
			if strings.HasPrefix(op, "SetTimestamps") && s.find(OptTimestamps) >= 0 {
				if s.optOffset(OptTimestamps)%2 == 1 {
					cov.tsOdd++
				} else {
					cov.tsEven++
				}
			}
			if strings.HasPrefix(op, "ClearOptions") && !strings.HasSuffix(op, "= 0") {
				cov.cleared++
			}
			if errs := specDiff(t, p.Bytes(), s); len(errs) > 0 {
				t.Fatalf("packet %d (v6=%v hbh=%d ipopts=%d options % x payload %d) after\n\t%s\n%s",
					i, s.v6, s.hbh, len(s.ipOpts), s.rawOptions(), len(s.payload),
					strings.Join(history, "\n\t"), joinLines(errs))
			}
			if !p.ChecksumValid() {
				t.Fatalf("packet %d: ChecksumValid() = false after %v", i, history)
			}
			if !bytes.Equal(h.Headers(), p.Headers()) {
				t.Fatalf("packet %d: header-only copy diverged after %v:\n got % x\nwant % x", i, history, h.Headers(), p.Headers())
			}
			if !bytes.Equal(buf[len(pkt):], pad) {
				t.Fatalf("packet %d: link padding modified after %v", i, history)
			}
		}
		// The checksums are exact, so recomputing them changes nothing.
		before := bytes.Clone(p.Bytes())
		p.RecomputeChecksums()
		if !bytes.Equal(p.Bytes(), before) {
			t.Fatalf("packet %d: RecomputeChecksums changed a packet whose checksums were exact", i)
		}
	}
	t.Logf("coverage: %+v", cov)
	if !testing.Short() && (cov.tsOdd < 50 || cov.tsEven < 50 || cov.v4opts < 50 || cov.v6hbh < 50 ||
		cov.noPayload < 50 || cov.padded < 50 || cov.cleared < 50) {
		t.Fatalf("random packets do not cover every case: %+v", cov)
	}
}

// specDiff is checkAgainstSpec returning the differences.
func specDiff(tb testing.TB, b []byte, s *pktSpec) (errs []string) {
	tb.Helper()
	ft := &fakeTB{TB: tb}
	func() {
		defer func() {
			if r := recover(); r != nil && r != ft {
				panic(r)
			}
		}()
		checkAgainstSpec(ft, b, s)
	}()
	return ft.errs
}

// fakeTB turns Fatalf into a recorded error and an unwind.
type fakeTB struct {
	testing.TB
	errs []string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.errs = append(f.errs, fmt.Sprintf(format, args...))
	panic(f)
}
func (f *fakeTB) Fatal(args ...any) {
	f.errs = append(f.errs, fmt.Sprint(args...))
	panic(f)
}

// applyRandomSetter applies one random setter with random arguments to
// every packet in ps (all holding the same headers) and updates the model.
// It returns a description of the call.
func applyRandomSetter(tb testing.TB, r *rand.Rand, ps []*Packet, s *pktSpec) string {
	tb.Helper()
	switch r.IntN(10) {
	case 0, 1:
		src := r.IntN(2) == 0
		a, port := randAddr(r, s.v6), uint16(r.Uint32())
		// A wrong family is refused without changing anything.
		wrong := randAddr(r, !s.v6)
		for _, p := range ps {
			before := bytes.Clone(p.Bytes())
			set := p.SetDst
			if src {
				set = p.SetSrc
			}
			if set(wrong, port) {
				tb.Fatalf("setting a %v address on a v6=%v packet succeeded", wrong, s.v6)
			}
			if !bytes.Equal(before, p.Bytes()) {
				tb.Fatalf("refused address %v changed the packet", wrong)
			}
			if !set(a, port) {
				tb.Fatalf("setting address %v on a v6=%v packet failed", a, s.v6)
			}
		}
		if src {
			s.src, s.sport = a, port
			return fmt.Sprintf("SetSrc(%v, %d)", a, port)
		}
		s.dst, s.dport = a, port
		return fmt.Sprintf("SetDst(%v, %d)", a, port)
	case 2:
		v := r.Uint32()
		for _, p := range ps {
			p.SetSeq(v)
		}
		s.seq = v
		return fmt.Sprintf("SetSeq(%#x)", v)
	case 3:
		v := r.Uint32()
		for _, p := range ps {
			p.SetAck(v)
		}
		s.ack = v
		return fmt.Sprintf("SetAck(%#x)", v)
	case 4:
		v := uint16(r.Uint32())
		for _, p := range ps {
			p.SetWindow(v)
		}
		s.window = v
		return fmt.Sprintf("SetWindow(%d)", v)
	case 5:
		v := uint8(r.Uint32())
		for _, p := range ps {
			p.SetFlags(v)
		}
		s.flags = v
		return fmt.Sprintf("SetFlags(%#02x)", v)
	case 6, 7:
		val, ecr := r.Uint32(), r.Uint32()
		i := s.find(OptTimestamps)
		for _, p := range ps {
			var o Options
			ParseOptions(p.TCP(), &o)
			if ok := p.SetTimestamps(&o, val, ecr); ok != (i >= 0) {
				tb.Fatalf("SetTimestamps = %v with options % x", ok, s.rawOptions())
			}
			if i >= 0 && (o.TSVal != val || o.TSEcr != ecr) {
				tb.Fatalf("SetTimestamps left Options at %d/%d, want %d/%d", o.TSVal, o.TSEcr, val, ecr)
			}
		}
		if i >= 0 {
			binary.BigEndian.PutUint32(s.opts[i].data, val)
			binary.BigEndian.PutUint32(s.opts[i].data[4:], ecr)
		}
		return fmt.Sprintf("SetTimestamps(%#x, %#x) at offset %d", val, ecr, s.optOffset(OptTimestamps))
	case 8:
		mss := uint16(r.Uint32())
		i := s.find(OptMSS)
		for _, p := range ps {
			var o Options
			ParseOptions(p.TCP(), &o)
			if ok := p.SetMSS(&o, mss); ok != (i >= 0) {
				tb.Fatalf("SetMSS = %v with options % x", ok, s.rawOptions())
			}
			if i >= 0 && o.MSS != mss {
				tb.Fatalf("SetMSS left Options at %d, want %d", o.MSS, mss)
			}
		}
		if i >= 0 {
			binary.BigEndian.PutUint16(s.opts[i].data, mss)
		}
		return fmt.Sprintf("SetMSS(%d) at offset %d", mss, s.optOffset(OptMSS))
	default:
		opts, want := nopOut(s.opts, OptSACKPermitted, OptSACK)
		for _, p := range ps {
			if got := p.ClearOptions(OptSACKPermitted, OptSACK); got != want {
				tb.Fatalf("ClearOptions on % x = %d, want %d", s.rawOptions(), got, want)
			}
		}
		s.opts = opts
		return fmt.Sprintf("ClearOptions(SACKPermitted, SACK) = %d", want)
	}
}

// nopOut returns opts with every option of the given kinds replaced by as
// many NOPs as it has bytes, and the number replaced.
func nopOut(opts []tcpOpt, kinds ...uint8) ([]tcpOpt, int) {
	var out []tcpOpt
	n := 0
	for _, o := range opts {
		if !slices.Contains(kinds, o.kind) {
			out = append(out, o)
			continue
		}
		n++
		for range o.len() {
			out = append(out, tcpOpt{OptNOP, nil})
		}
	}
	return out, n
}

func TestRecomputeChecksums(t *testing.T) {
	r := rand.New(rand.NewPCG(23, 24))
	for range 300 {
		s := randSpec(r)
		want := s.build(t)
		b := bytes.Clone(want)
		var p Packet
		if err := p.Decode(b); err != nil {
			t.Fatal(err)
		}
		// Corrupt both checksums, as checksum offload leaves them.
		p.TCP().SetChecksum(uint16(r.Uint32()))
		if !s.v6 {
			IPv4(b).SetChecksum(uint16(r.Uint32()))
		}
		if p.ChecksumValid() && !bytes.Equal(b, want) {
			t.Fatalf("ChecksumValid() = true with a corrupted checksum")
		}
		p.RecomputeChecksums()
		if !bytes.Equal(b, want) {
			t.Fatalf("RecomputeChecksums:\n got % x\nwant % x", b, want)
		}
		if !p.ChecksumValid() {
			t.Fatalf("ChecksumValid() = false after RecomputeChecksums")
		}
		// Any single flipped bit is detected.
		bit := r.IntN(8 * (len(b) - p.IPHeaderLen()))
		b[p.IPHeaderLen()+bit/8] ^= 1 << (bit % 8)
		if p.ChecksumValid() {
			t.Fatalf("ChecksumValid() = true with bit %d of the segment flipped", bit)
		}
	}
}

// TestSetAddrFamilies covers which addresses SetSrc and SetDst accept.
func TestSetAddrFamilies(t *testing.T) {
	for _, tc := range []struct {
		v6   bool
		addr string
		ok   bool
	}{
		{false, "203.0.113.9", true},
		{false, "::ffff:203.0.113.9", true}, // an IPv4 address, mapped
		{false, "2001:db8::9", false},
		{false, "", false},
		{true, "2001:db8::9", true},
		{true, "203.0.113.9", false},
		{true, "::ffff:203.0.113.9", false},
		{true, "", false},
	} {
		s := v4Spec()
		if tc.v6 {
			s = v6Spec()
		}
		var a netip.Addr
		if tc.addr != "" {
			a = netip.MustParseAddr(tc.addr)
		}
		for _, src := range []bool{true, false} {
			b := s.build(t)
			var p Packet
			if err := p.Decode(b); err != nil {
				t.Fatal(err)
			}
			before := bytes.Clone(b)
			set := p.SetDst
			if src {
				set = p.SetSrc
			}
			if got := set(a, 9999); got != tc.ok {
				t.Errorf("v6=%v src=%v: Set(%q) = %v, want %v", tc.v6, src, tc.addr, got, tc.ok)
				continue
			}
			if !tc.ok {
				if !bytes.Equal(b, before) {
					t.Errorf("v6=%v src=%v: refused Set(%q) changed the packet", tc.v6, src, tc.addr)
				}
				continue
			}
			want := s.clone()
			if src {
				want.src, want.sport = a.Unmap(), 9999
			} else {
				want.dst, want.dport = a.Unmap(), 9999
			}
			checkAgainstSpec(t, b, want)
		}
	}
}

// TestClearOptionsKeepsOthers clears a subset of options at odd offsets and
// checks the rest, and the checksum, through the model.
func TestClearOptionsKeepsOthers(t *testing.T) {
	s := v4Spec()
	s.opts = []tcpOpt{
		{OptWindowScale, []byte{9}},                     // offset 20, 3 bytes
		{OptSACKPermitted, nil},                         // offset 23, odd
		{OptTimestamps, []byte{1, 2, 3, 4, 5, 6, 7, 8}}, // offset 25, odd
		{OptSACK, []byte{0, 0, 0, 1, 0, 0, 0, 2}},       // offset 35, odd
		{OptMSS, []byte{0x05, 0xb4}},                    // offset 45, odd
	}
	b := s.build(t)
	var p Packet
	if err := p.Decode(b); err != nil {
		t.Fatal(err)
	}
	if n := p.ClearOptions(); n != 0 {
		t.Fatalf("ClearOptions() = %d, want 0", n)
	}
	if n := p.ClearOptions(OptSACK, OptSACKPermitted, OptSACK); n != 2 {
		t.Fatalf("ClearOptions(SACK, SACKPermitted) = %d, want 2", n)
	}
	want := s.clone()
	want.opts = []tcpOpt{
		s.opts[0],
		{OptNOP, nil}, {OptNOP, nil},
		s.opts[2],
	}
	for range 10 {
		want.opts = append(want.opts, tcpOpt{OptNOP, nil})
	}
	want.opts = append(want.opts, s.opts[4])
	checkAgainstSpec(t, b, want)
	var o Options
	ParseOptions(p.TCP(), &o)
	if !p.SetMSS(&o, 1200) || !p.SetTimestamps(&o, 77, 88) {
		t.Fatal("SetMSS/SetTimestamps failed after ClearOptions")
	}
	want.opts[14].data = []byte{0x04, 0xb0}
	want.opts[3].data = []byte{0, 0, 0, 77, 0, 0, 0, 88}
	checkAgainstSpec(t, b, want)
	if n := p.ClearOptions(OptTimestamps, OptMSS, OptWindowScale); n != 3 {
		t.Fatalf("ClearOptions(TS, MSS, WS) = %d, want 3", n)
	}
	want.opts, _ = nopOut(want.opts, OptTimestamps, OptMSS, OptWindowScale)
	checkAgainstSpec(t, b, want)
}

// TestDecodeTruncated cuts packets at every length.
func TestDecodeTruncated(t *testing.T) {
	v4opts := v4Spec()
	v4opts.ipOpts = randSpec(rand.New(rand.NewPCG(3, 3))).ipOpts
	for len(v4opts.ipOpts) == 0 {
		v4opts.ipOpts = randSpec(rand.New(rand.NewPCG(uint64(len(v4opts.payload)), 1))).ipOpts
		v4opts.payload = append(v4opts.payload, 'x')
	}
	v6plain := v6Spec()
	v6plain.hbh = 0
	v6big := v6Spec()
	v6big.hbh = 24
	for _, s := range []*pktSpec{v4Spec(), v4opts, v6Spec(), v6plain, v6big} {
		b := s.build(t)
		hdrLen := s.ipHeaderLen() + s.tcpHeaderLen()
		for cut := range len(b) {
			var p Packet
			if err := p.Decode(b[:cut]); !errors.Is(err, ErrTruncated) {
				t.Errorf("v6=%v: Decode(first %d of %d bytes) = %v, want %v", s.v6, cut, len(b), err, ErrTruncated)
			}
			err := p.DecodeHeader(b[:cut])
			if cut < hdrLen {
				if !errors.Is(err, ErrTruncated) {
					t.Errorf("v6=%v: DecodeHeader(first %d of %d bytes) = %v, want %v", s.v6, cut, hdrLen, err, ErrTruncated)
				}
				continue
			}
			if err != nil {
				t.Errorf("v6=%v: DecodeHeader(first %d bytes, headers %d) = %v", s.v6, cut, hdrLen, err)
				continue
			}
			if p.PayloadLen() != len(s.payload) || !bytes.Equal(p.Payload(), s.payload[:cut-hdrLen]) ||
				!bytes.Equal(p.Headers(), b[:hdrLen]) {
				t.Errorf("v6=%v: DecodeHeader(first %d bytes): PayloadLen %d, Payload %d bytes, want %d, %d",
					s.v6, cut, p.PayloadLen(), len(p.Payload()), len(s.payload), cut-hdrLen)
			}
		}
		var p Packet
		if err := p.Decode(b); err != nil {
			t.Errorf("v6=%v: Decode(whole packet) = %v", s.v6, err)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	noPayload := func(s *pktSpec) *pktSpec { s.payload = nil; return s }
	type tc struct {
		name   string
		spec   *pktSpec
		mutate func(b []byte) []byte
		want   error // from Decode
		header error // from DecodeHeader
	}
	set16 := func(off int, v uint16) func([]byte) []byte {
		return func(b []byte) []byte { binary.BigEndian.PutUint16(b[off:], v); return b }
	}
	setByte := func(off int, v byte) func([]byte) []byte {
		return func(b []byte) []byte { b[off] = v; return b }
	}
	// v4Spec: 20-byte IP header, 32-byte TCP header. v6Spec: 40-byte
	// header, 8-byte hop-by-hop header, 40-byte TCP header.
	v4Len := len(v4Spec().build(t))
	v6Len := len(v6Spec().build(t))
	cases := []tc{
		{"v4 ok", v4Spec(), nil, nil, nil},
		{"v6 ok", v6Spec(), nil, nil, nil},
		{"empty", v4Spec(), func([]byte) []byte { return nil }, ErrTruncated, ErrTruncated},
		{"v4 DF only", v4Spec(), setByte(6, 0x40), nil, nil},
		{"v4 MF", v4Spec(), setByte(6, 0x20), ErrFragment, ErrFragment},
		{"v4 offset 8", v4Spec(), set16(6, 1), ErrFragment, ErrFragment},
		{"v4 DF and top offset bits", v4Spec(), set16(6, 0x5000), ErrFragment, ErrFragment},
		{"v4 last fragment", v4Spec(), set16(6, 0x1fff), ErrFragment, ErrFragment},
		{"v4 udp", v4Spec(), setByte(9, 17), ErrNotTCP, ErrNotTCP},
		{"v4 icmp", v4Spec(), setByte(9, 1), ErrNotTCP, ErrNotTCP},
		{"v4 ihl beyond total length", v4Spec(), func(b []byte) []byte {
			b[0] = 0x4f
			binary.BigEndian.PutUint16(b[2:], 56)
			return b
		}, ErrHeader, ErrHeader},
		{"v4 total length below ip+tcp headers", v4Spec(), set16(2, 20+19), ErrHeader, ErrHeader},
		{"v4 total length below tcp header with options", v4Spec(), set16(2, 20+31), ErrHeader, ErrHeader},
		{"v4 total length beyond buffer", v4Spec(), set16(2, uint16(v4Len+1)), ErrTruncated, nil},
		{"v4 tcp data offset past ip length", noPayload(v4Spec()), setByte(20+12, 0xf0), ErrHeader, ErrHeader},
		{"v6 payload length 0", v6Spec(), set16(4, 0), ErrHeader, ErrHeader},
		{"v4 big tcp: total length 0, 70000 bytes", v4Spec(), func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[2:], 0)
			return append(b, make([]byte, 70000)...)
		}, ErrTooBig, ErrTooBig},
		{"v6 jumbogram: payload length 0, 70000 bytes", v6Spec(), func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[4:], 0)
			return append(b, make([]byte, 70000)...)
		}, ErrTooBig, ErrTooBig},
		{"v6 v4-mapped source", v6Spec(), func(b []byte) []byte {
			copy(b[8:24], netip.MustParseAddr("::ffff:192.0.2.1").AsSlice())
			return b
		}, ErrMapped, ErrMapped},
		{"v6 v4-mapped destination", v6Spec(), func(b []byte) []byte {
			copy(b[24:40], netip.MustParseAddr("::ffff:198.51.100.7").AsSlice())
			return b
		}, ErrMapped, ErrMapped},
		{"v6 payload length beyond buffer", v6Spec(), set16(4, uint16(v6Len-40+1)), ErrTruncated, nil},
		{"v6 payload length below tcp header", v6Spec(), set16(4, 8+39), ErrHeader, ErrHeader},
		{"v6 payload length below hop-by-hop header", v6Spec(), set16(4, 4), ErrHeader, ErrHeader},
		{"v6 hop-by-hop length past packet", v6Spec(), setByte(41, 200), ErrHeader, ErrHeader},
		{"v6 tcp data offset past ip length", noPayload(v6Spec()), setByte(48+12, 0xf0), ErrHeader, ErrHeader},
		{"v6 fragment", v6Spec(), setByte(6, protoFragment), ErrFragment, ErrFragment},
		{"v6 hop-by-hop then fragment", v6Spec(), setByte(40, protoFragment), ErrFragment, ErrFragment},
		{"v6 udp", v6Spec(), setByte(6, 17), ErrNotTCP, ErrNotTCP},
		{"v6 hop-by-hop then udp", v6Spec(), setByte(40, 17), ErrNotTCP, ErrNotTCP},
		{"v6 icmpv6", v6Spec(), setByte(6, 58), ErrNotTCP, ErrNotTCP},
		{"v6 no next header", v6Spec(), setByte(6, 59), ErrNotTCP, ErrNotTCP},
		// Destination options and routing headers share the hop-by-hop
		// header's layout, so relabelling it must still decode.
		{"v6 destination options", v6Spec(), setByte(6, protoDestOpts), nil, nil},
		{"v6 routing", v6Spec(), setByte(6, protoRouting), nil, nil},
	}
	for _, v := range []byte{0, 1, 2, 3, 5, 7, 8, 15} {
		cases = append(cases, tc{fmt.Sprintf("version %d", v), v4Spec(),
			func(b []byte) []byte { b[0] = v<<4 | 5; return b }, ErrVersion, ErrVersion})
	}
	for ihl := range byte(5) {
		cases = append(cases, tc{fmt.Sprintf("v4 ihl %d", ihl), v4Spec(), setByte(0, 0x40|ihl), ErrHeader, ErrHeader})
	}
	for off := range byte(5) {
		cases = append(cases, tc{fmt.Sprintf("v4 tcp data offset %d", off), v4Spec(), setByte(20+12, off<<4), ErrHeader, ErrHeader})
		cases = append(cases, tc{fmt.Sprintf("v6 tcp data offset %d", off), v6Spec(), setByte(48+12, off<<4), ErrHeader, ErrHeader})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := c.spec.build(t)
			if c.mutate != nil {
				b = c.mutate(b)
			}
			var p Packet
			if err := p.Decode(b); !errors.Is(err, c.want) || (err == nil) != (c.want == nil) {
				t.Errorf("Decode = %v, want %v", err, c.want)
			}
			if err := p.DecodeHeader(b); !errors.Is(err, c.header) || (err == nil) != (c.header == nil) {
				t.Errorf("DecodeHeader = %v, want %v", err, c.header)
			}
		})
	}
}

// TestDecodeLinkPadding checks that bytes past the IP length are cut, so
// checksums and payloads ignore Ethernet minimum-frame padding.
func TestDecodeLinkPadding(t *testing.T) {
	for _, s := range []*pktSpec{v4Spec(), v6Spec()} {
		s.payload = nil
		pkt := s.build(t)
		b := append(bytes.Clone(pkt), 0xde, 0xad, 0xbe, 0xef, 0x01, 0x02)
		for _, whole := range []bool{true, false} {
			var p Packet
			decode := p.Decode
			if !whole {
				decode = p.DecodeHeader
			}
			if err := decode(b); err != nil {
				t.Fatalf("v6=%v: decode with padding: %v", s.v6, err)
			}
			if !bytes.Equal(p.Bytes(), pkt) || len(p.Payload()) != 0 || p.PayloadLen() != 0 {
				t.Fatalf("v6=%v: padding not cut: Bytes %d bytes, Payload %d bytes, want %d, 0",
					s.v6, len(p.Bytes()), len(p.Payload()), len(pkt))
			}
			if !p.ChecksumValid() {
				t.Fatalf("v6=%v: ChecksumValid() = false: padding summed", s.v6)
			}
			p.RecomputeChecksums()
			if !bytes.Equal(b[:len(pkt)], pkt) || !bytes.Equal(b[len(pkt):], []byte{0xde, 0xad, 0xbe, 0xef, 0x01, 0x02}) {
				t.Fatalf("v6=%v: RecomputeChecksums with padding changed bytes", s.v6)
			}
		}
	}
}

func TestDecodeResetsPacket(t *testing.T) {
	var p Packet
	if err := p.Decode(v6Spec().build(t)); err != nil {
		t.Fatal(err)
	}
	if err := p.Decode([]byte{0x45}); !errors.Is(err, ErrTruncated) {
		t.Fatalf("Decode = %v, want %v", err, ErrTruncated)
	}
	if p.IsV6() || p.Bytes() != nil {
		t.Fatalf("failed Decode left the previous packet in place")
	}
}

func TestTuple(t *testing.T) {
	a4 := netip.MustParseAddrPort("192.0.2.1:40000")
	b4 := netip.MustParseAddrPort("198.51.100.7:8080")
	a6 := netip.MustParseAddrPort("[2001:db8::1]:51000")
	b6 := netip.MustParseAddrPort("[2001:db8:1::2]:443")

	t4, t6 := TupleOf(a4, b4), TupleOf(a6, b6)
	if !t4.Is4() || t6.Is4() || (Tuple{}).Is4() {
		t.Errorf("Is4: v4 %v, v6 %v, zero %v", t4.Is4(), t6.Is4(), (Tuple{}).Is4())
	}
	if got := t4.String(); got != "192.0.2.1:40000->198.51.100.7:8080" {
		t.Errorf("String() = %q", got)
	}
	if got := t6.String(); got != "[2001:db8::1]:51000->[2001:db8:1::2]:443" {
		t.Errorf("String() = %q", got)
	}
	if t4.SrcAddrPort() != a4 || t4.DstAddrPort() != b4 || t6.SrcAddrPort() != a6 || t6.DstAddrPort() != b6 {
		t.Errorf("TupleOf does not round trip: %v %v", t4, t6)
	}
	for _, tu := range []Tuple{t4, t6} {
		rev := tu.Reverse()
		if rev.SrcAddrPort() != tu.DstAddrPort() || rev.DstAddrPort() != tu.SrcAddrPort() || rev.Is4() != tu.Is4() {
			t.Errorf("Reverse(%v) = %v", tu, rev)
		}
		if rev == tu || rev.Reverse() != tu {
			t.Errorf("Reverse(Reverse(%v)) = %v", tu, rev.Reverse())
		}
	}
	// A mapped address is the same IPv4 endpoint.
	mapped := netip.AddrPortFrom(netip.AddrFrom16(a4.Addr().As16()), a4.Port())
	if TupleOf(mapped, b4) != t4 {
		t.Errorf("TupleOf(%v, %v) != TupleOf(%v, %v)", mapped, b4, a4, b4)
	}

	// Decoded packets give the same tuples, usable as map keys.
	flows := map[Tuple]string{t4: "v4", t6: "v6"}
	for _, s := range []*pktSpec{v4Spec(), v6Spec()} {
		var p Packet
		if err := p.Decode(s.build(t)); err != nil {
			t.Fatal(err)
		}
		tu := p.Tuple()
		want := "v4"
		if s.v6 {
			want = "v6"
		}
		if flows[tu] != want {
			t.Errorf("Tuple() of the %s packet = %v, not found in %v", want, tu, flows)
		}
		if _, ok := flows[tu.Reverse()]; ok {
			t.Errorf("reverse tuple %v found in the map", tu.Reverse())
		}
	}
	if len(flows) != 2 {
		t.Errorf("map has %d entries", len(flows))
	}
}

func TestRetargetRecomputesFromScratch(t *testing.T) {
	for _, c := range []struct{ src, dst, nsrc, ndst string }{
		{"198.18.0.2:40000", "198.18.0.1:80", "198.19.4.5:40001", "198.18.1.2:8080"},
		{"[2001:2::2]:40000", "[2001:2::1]:80", "[2001:2:0:ff::9]:5", "[2001:2:0:1::2]:443"},
	} {
		seg := Segment{
			Src: netip.MustParseAddrPort(c.src), Dst: netip.MustParseAddrPort(c.dst),
			Seq: 1, Ack: 2, Flags: FlagACK, Window: 9, Payload: []byte("payload bytes"),
		}
		b := make([]byte, seg.Len())
		if _, err := seg.Put(b); err != nil {
			t.Fatal(err)
		}
		var p Packet
		if err := p.Decode(b); err != nil {
			t.Fatal(err)
		}
		p.TCP().SetChecksum(0xbeef) // a partial checksum from an offloading link
		nsrc, ndst := netip.MustParseAddrPort(c.nsrc), netip.MustParseAddrPort(c.ndst)
		if !p.Retarget(nsrc, ndst) {
			t.Fatal("Retarget refused same-family addresses")
		}
		want := Segment{Src: nsrc, Dst: ndst, Seq: 1, Ack: 2, Flags: FlagACK, Window: 9, Payload: []byte("payload bytes")}
		wb := make([]byte, want.Len())
		if _, err := want.Put(wb); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p.Bytes(), wb) {
			t.Fatalf("retargeted packet differs from one built for the new endpoints:\n got %x\nwant %x", p.Bytes(), wb)
		}
		other := netip.MustParseAddrPort("198.18.0.9:1")
		if p.IsV6() && p.Retarget(other, ndst) {
			t.Fatal("Retarget accepted an address of the other family")
		}
	}
}
