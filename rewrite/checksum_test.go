package rewrite

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

func TestRefSum(t *testing.T) {
	// The reference itself, against hand-computed values (RFC 1071 §3).
	for _, tc := range []struct {
		b       []byte
		initial uint16
		want    uint16
	}{
		{nil, 0, 0},
		{nil, 0xffff, 0xffff},
		{[]byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}, 0, 0xddf2},
		{[]byte{0xff, 0xff, 0x00, 0x01}, 0, 0x0001},
		{[]byte{0xab}, 0, 0xab00},
		{[]byte{0x00, 0x01}, 0xffff, 0x0001},
	} {
		if got := refSum(tc.b, tc.initial); got != tc.want {
			t.Errorf("refSum(% x, %#x) = %#04x, want %#04x", tc.b, tc.initial, got, tc.want)
		}
	}
}

// TestSum compares Sum with the naive reference over every length up to
// 300, random lengths up to 65535, odd start offsets and random initial
// values. Both return 0 only when everything summed is 0 and a value in
// 1..0xffff otherwise, so the results must be identical, not merely equal
// modulo 0xffff.
func TestSum(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	buf := randBytes(r, 65536+1)
	ones := bytes.Repeat([]byte{0xff}, 65536)
	zeros := make([]byte, 65536)
	check := func(b []byte, initial uint16) {
		t.Helper()
		if got, want := Sum(b, initial), refSum(b, initial); got != want {
			t.Fatalf("Sum(len %d, initial %#04x) = %#04x, reference %#04x", len(b), initial, got, want)
		}
	}
	initials := []uint16{0, 1, 0xfffe, 0xffff}
	for n := 0; n <= 300; n++ {
		for _, init := range append(initials, uint16(r.Uint32())) {
			check(buf[:n], init)
			check(buf[1:1+n], init)
			check(ones[:n], init)
			check(zeros[:n], init)
		}
	}
	for range 500 {
		n := r.IntN(65536)
		off := r.IntN(2)
		check(buf[off:off+n], uint16(r.Uint32()))
	}
	for _, n := range []int{65535, 65536} {
		for _, init := range initials {
			check(buf[:n], init)
			check(ones[:n], init)
			check(zeros[:n], init)
		}
	}
}

// TestSumChained checks that summing in pieces with the running sum as
// initial value matches one pass, when every piece but the last is of even
// length.
func TestSumChained(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 1000 {
		b := randBytes(r, r.IntN(2000))
		cut := r.IntN(len(b)+1) &^ 1
		if got, want := Sum(b[cut:], Sum(b[:cut], 0)), refSum(b, 0); got != want {
			t.Fatalf("chained Sum over %d bytes cut at %d = %#04x, reference %#04x", len(b), cut, got, want)
		}
	}
}

func TestPseudoHeaderSum(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for i := range 2000 {
		v6 := i%2 == 1
		src, dst := randAddr(r, v6), randAddr(r, v6)
		length := r.Uint32()
		if !v6 {
			length &= 0xffff
		}
		var ph []byte
		ph = append(ph, src.AsSlice()...)
		ph = append(ph, dst.AsSlice()...)
		if v6 {
			// RFC 8200 §8.1: 32-bit length, 24 zero bits, next header.
			ph = binary.BigEndian.AppendUint32(ph, length)
			ph = append(ph, 0, 0, 0, ProtoTCP)
		} else {
			// RFC 9293 §3.1: zero byte, protocol, 16-bit length.
			ph = append(ph, 0, ProtoTCP)
			ph = binary.BigEndian.AppendUint16(ph, uint16(length))
		}
		if got, want := PseudoHeaderSum(ProtoTCP, src.AsSlice(), dst.AsSlice(), length), refSum(ph, 0); got != want {
			t.Fatalf("PseudoHeaderSum(%v, %v, %d) = %#04x, reference %#04x", src, dst, length, got, want)
		}
	}
}

// randHeader returns random data for the update tests whose first word is
// never zero, as in any real header (the version nibble, the protocol in a
// pseudo header). For all-zero data the ones' complement checksum has two
// encodings, 0x0000 and 0xffff, and an incremental update may pick the
// other one; with a non-zero word outside the changed field, both the
// recomputation and the update stay in 0x0000..0xfffe and must be equal.
func randHeader(r *rand.Rand, n int) []byte {
	b := randBytes(r, n)
	b[0] |= 0x40
	return b
}

func TestUpdate16(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for i := range 20000 {
		b := randHeader(r, 4+2*r.IntN(30))
		cksum := ^refSum(b, 0)
		off := 2 + 2*r.IntN(len(b)/2-1)
		old := binary.BigEndian.Uint16(b[off:])
		var v uint16
		switch i % 4 {
		case 0:
			v = 0
		case 1:
			v = 0xffff
		default:
			v = uint16(r.Uint32())
		}
		binary.BigEndian.PutUint16(b[off:], v)
		if got, want := Update16(cksum, old, v), ^refSum(b, 0); got != want {
			t.Fatalf("Update16(%#04x, %#04x, %#04x) = %#04x, recomputed %#04x", cksum, old, v, got, want)
		}
	}
}

func TestUpdate32(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	for i := range 20000 {
		b := randHeader(r, 2+2*(2+r.IntN(30)))
		cksum := ^refSum(b, 0)
		off := 2 + 2*r.IntN(len(b)/2-2)
		old := binary.BigEndian.Uint32(b[off:])
		var v uint32
		switch i % 4 {
		case 0:
			v = 0
		case 1:
			v = 0xffffffff
		default:
			v = r.Uint32()
		}
		binary.BigEndian.PutUint32(b[off:], v)
		if got, want := Update32(cksum, old, v), ^refSum(b, 0); got != want {
			t.Fatalf("Update32(%#04x, %#08x, %#08x) = %#04x, recomputed %#04x", cksum, old, v, got, want)
		}
	}
}

func TestUpdateBytes(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	for i := range 20000 {
		n := 4
		if i%2 == 1 {
			n = 16
		}
		b := randHeader(r, 2+n+2*r.IntN(20))
		cksum := ^refSum(b, 0)
		off := 2 + 2*r.IntN((len(b)-2-n)/2+1)
		old := bytes.Clone(b[off : off+n])
		v := randBytes(r, n)
		if i%7 == 0 {
			clear(v)
		}
		copy(b[off:], v)
		if got, want := UpdateBytes(cksum, old, v), ^refSum(b, 0); got != want {
			t.Fatalf("UpdateBytes(%#04x, % x, % x) = %#04x, recomputed %#04x", cksum, old, v, got, want)
		}
	}
}

func TestIPv4Setters(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	for range 200 {
		s := randSpec(r)
		s.v6 = false
		s.hbh = 0
		s.src, s.dst = randAddr(r, false), randAddr(r, false)
		b := s.build(t)
		ip := IPv4(b)
		if got, want := ip.ComputeChecksum(), refIPv4Checksum(b); got != want || ip.Checksum() != want {
			t.Fatalf("ComputeChecksum = %#04x, header has %#04x, recomputed %#04x", got, ip.Checksum(), want)
		}
		if ip.HeaderLen() != s.ipHeaderLen() || ip.TotalLen() != len(b) || ip.ID() != s.id ||
			ip.TTL() != s.ttl || ip.Protocol() != ProtoTCP || ip.SrcAddr() != s.src || ip.DstAddr() != s.dst ||
			ip.IsFragment() {
			t.Fatalf("IPv4 getters disagree with %+v", s)
		}
		id := uint16(r.Uint32())
		ip.SetID(id)
		if ip.ID() != id || ip.Checksum() != refIPv4Checksum(b) {
			t.Fatalf("SetID(%#x): id %#x, checksum %#04x, recomputed %#04x", id, ip.ID(), ip.Checksum(), refIPv4Checksum(b))
		}
		n := 20 + r.IntN(65516)
		ip.SetTotalLen(n)
		if ip.TotalLen() != n || ip.Checksum() != refIPv4Checksum(b) {
			t.Fatalf("SetTotalLen(%d): len %d, checksum %#04x, recomputed %#04x", n, ip.TotalLen(), ip.Checksum(), refIPv4Checksum(b))
		}
	}
}

func TestIPv6Getters(t *testing.T) {
	s := v6Spec()
	b := s.build(t)
	ip := IPv6(b)
	if ip.PayloadLen() != len(b)-IPv6HeaderLen || ip.NextHeader() != protoHopByHop || ip.HopLimit() != s.ttl ||
		ip.SrcAddr() != s.src || ip.DstAddr() != s.dst {
		t.Fatalf("IPv6 getters disagree with the model")
	}
	ip.SetPayloadLen(1234)
	if got := binary.BigEndian.Uint16(b[4:]); got != 1234 {
		t.Fatalf("SetPayloadLen(1234) wrote %d", got)
	}
}
