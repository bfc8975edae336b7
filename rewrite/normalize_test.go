package rewrite

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/google/gopacket/layers"
)

// TestNormalize: IPv4 options and IPv6 extension headers are gone, the
// TTL is fresh, the TCP segment is unchanged and both checksums verify.
func TestNormalize(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 9))
	withOpts := 0
	for i := 0; i < 500; i++ {
		s := randSpec(r)
		b := s.build(t)
		var p Packet
		if err := p.Decode(b); err != nil {
			t.Fatalf("%d: decode: %v", i, err)
		}
		minIP := IPv4MinHeaderLen
		if p.IsV6() {
			minIP = IPv6HeaderLen
		}
		if p.IPHeaderLen() > minIP {
			withOpts++
		}
		seg := bytes.Clone(b[p.IPHeaderLen():])
		tu := p.Tuple()
		n := p.Normalize(64)
		if n != minIP+len(seg) || len(p.Bytes()) != n {
			t.Fatalf("%d: Normalize = %d, packet %d bytes, want %d", i, n, len(p.Bytes()), minIP+len(seg))
		}
		var q Packet
		if err := q.Decode(p.Bytes()); err != nil {
			t.Fatalf("%d: normalized packet does not decode: %v", i, err)
		}
		if q.IPHeaderLen() != minIP || !bytes.Equal(q.Bytes()[minIP:], seg) || q.Tuple() != tu {
			t.Fatalf("%d: ip header %d bytes, segment or tuple changed", i, q.IPHeaderLen())
		}
		if q.IsV6() && IPv6(q.Bytes()).HopLimit() != 64 || !q.IsV6() && IPv4(q.Bytes()).TTL() != 64 {
			t.Fatalf("%d: ttl not 64", i)
		}
		q.RecomputeChecksums()
		if !q.IsV6() && IPv4(q.Bytes()).Checksum() != refIPv4Checksum(q.Bytes()) {
			t.Fatalf("%d: ipv4 checksum wrong", i)
		}
		checkChecksumsExact(t, &q, "Normalize")
	}
	if withOpts < 50 {
		t.Fatalf("only %d of 500 packets had ip options or extension headers", withOpts)
	}
}

// TestNormalizeKeepsIPv4Checksum: Normalize alone leaves a valid IPv4
// header checksum (the TCP checksum is Retarget's business).
func TestNormalizeKeepsIPv4Checksum(t *testing.T) {
	s := v4Spec()
	s.ipOpts = []layers.IPv4Option{{OptionType: 0x94, OptionLength: 4, OptionData: []byte{0, 0}}}
	var p Packet
	if err := p.Decode(s.build(t)); err != nil {
		t.Fatal(err)
	}
	p.Normalize(64)
	if got, want := IPv4(p.Bytes()).Checksum(), refIPv4Checksum(p.Bytes()); got != want {
		t.Fatalf("ipv4 checksum %#04x, want %#04x", got, want)
	}
}

func TestTrimPayload(t *testing.T) {
	for _, s := range []*pktSpec{v4Spec(), v6Spec()} {
		s.flags = FlagSYN
		var p Packet
		if err := p.Decode(s.build(t)); err != nil {
			t.Fatal(err)
		}
		hdr := bytes.Clone(p.Headers())
		p.TrimPayload()
		var q Packet
		if err := q.Decode(p.Bytes()); err != nil {
			t.Fatalf("v6=%v: trimmed packet does not decode: %v", s.v6, err)
		}
		if q.PayloadLen() != 0 || len(q.Bytes()) != len(hdr) {
			t.Fatalf("v6=%v: payload %d, length %d, want 0 and %d", s.v6, q.PayloadLen(), len(q.Bytes()), len(hdr))
		}
		checkChecksumsExact(t, &q, "TrimPayload")
	}
}

func TestNormalizeAllocs(t *testing.T) {
	s := v6Spec()
	b := s.build(t)
	work := make([]byte, len(b))
	n := testing.AllocsPerRun(100, func() {
		copy(work, b)
		var p Packet
		_ = p.Decode(work)
		p.Normalize(64)
	})
	if n != 0 {
		t.Fatalf("Normalize allocates %v per packet", n)
	}
}
