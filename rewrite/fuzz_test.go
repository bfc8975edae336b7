package rewrite

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// fuzzSeeds returns constructed packets: fixed, random, and some of the
// table tests' malformed variants.
func fuzzSeeds(tb testing.TB) [][]byte {
	seeds := [][]byte{v4Spec().build(tb), v6Spec().build(tb)}
	r := rand.New(rand.NewPCG(51, 52))
	for range 20 {
		s := randSpec(r)
		if len(s.payload) > 64 {
			s.payload = s.payload[:64]
		}
		seeds = append(seeds, s.build(tb))
	}
	v4, v6 := v4Spec().build(tb), v6Spec().build(tb)
	mut := func(b []byte, off int, v byte) []byte { b = bytes.Clone(b); b[off] = v; return b }
	seeds = append(seeds,
		v4[:30], v6[:45], append(bytes.Clone(v4), 0, 0, 0, 0),
		mut(v4, 0, 0x4f), mut(v4, 6, 0x20), mut(v4, 9, 17), mut(v4, 32, 0xf0),
		mut(v6, 6, protoFragment), mut(v6, 6, protoDestOpts), mut(v6, 40, protoRouting), mut(v6, 41, 3),
	)
	return seeds
}

var decodeErrors = []error{ErrTruncated, ErrVersion, ErrNotTCP, ErrFragment, ErrHeader, ErrTooBig, ErrMapped}

// checkChecksumsExact compares the packet's checksums with a recomputation
// from scratch; op names the last change.
func checkChecksumsExact(t *testing.T, p *Packet, op string) {
	t.Helper()
	b := p.Bytes()
	if !p.IsV6() {
		if got, want := IPv4(b).Checksum(), refIPv4Checksum(b); got != want {
			t.Fatalf("after %s: ipv4 checksum %#04x, recomputed %#04x", op, got, want)
		}
	}
	if got, want := p.TCP().Checksum(), refTCPChecksum(p.SrcAddr(), p.DstAddr(), b[p.IPHeaderLen():]); got != want {
		t.Fatalf("after %s: tcp checksum %#04x, recomputed %#04x", op, got, want)
	}
	if !p.ChecksumValid() {
		t.Fatalf("after %s: ChecksumValid() = false", op)
	}
}

func FuzzDecode(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var wholeTuple Tuple
		wholeOK := false
		for _, whole := range []bool{true, false} {
			b := bytes.Clone(data)
			var p Packet
			var err error
			if whole {
				err = p.Decode(b)
			} else {
				err = p.DecodeHeader(b)
			}
			if err != nil {
				known := false
				for _, e := range decodeErrors {
					known = known || errors.Is(err, e)
				}
				if !known {
					t.Fatalf("whole=%v: unknown error %v", whole, err)
				}
				if !whole && wholeOK {
					t.Fatalf("Decode succeeded but DecodeHeader failed: %v", err)
				}
				continue
			}
			wholeOK = wholeOK || whole
			if whole {
				// A normalized copy decodes to the same flow with a
				// minimal IP header.
				var n Packet
				nb := bytes.Clone(p.Bytes())
				_ = n.Decode(nb)
				n.Normalize(64)
				var q Packet
				if err := q.Decode(n.Bytes()); err != nil || q.Tuple() != p.Tuple() || q.PayloadLen() != p.PayloadLen() {
					t.Fatalf("normalized packet: %v", err)
				}
			}

			// Views are in range and alias the input.
			pb := p.Bytes()
			hl, tl := p.IPHeaderLen(), p.TCP().HeaderLen()
			minIP := IPv4MinHeaderLen
			if p.IsV6() {
				minIP = IPv6HeaderLen
			}
			if len(pb) > len(b) || (len(pb) > 0 && &pb[0] != &b[0]) {
				t.Fatalf("Bytes() is not a prefix of the input")
			}
			if hl < minIP || tl < TCPMinHeaderLen || tl > TCPMaxHeaderLen || len(p.Headers()) != hl+tl || hl+tl > len(pb) {
				t.Fatalf("whole=%v: ip header %d, tcp header %d, headers %d, packet %d", whole, hl, tl, len(p.Headers()), len(pb))
			}
			if !bytes.Equal(p.Payload(), pb[hl+tl:]) || p.PayloadLen() < len(p.Payload()) ||
				(whole && p.PayloadLen() != len(p.Payload())) {
				t.Fatalf("whole=%v: payload %d bytes present, PayloadLen %d", whole, len(p.Payload()), p.PayloadLen())
			}
			tu := p.Tuple()
			if tu.SrcAddrPort() != netip.AddrPortFrom(p.SrcAddr().Unmap(), p.TCP().SrcPort()) ||
				tu.DstAddrPort() != netip.AddrPortFrom(p.DstAddr().Unmap(), p.TCP().DstPort()) ||
				(!p.IsV6() && !tu.Is4()) {
				t.Fatalf("Tuple() = %v for %v:%d -> %v:%d", tu, p.SrcAddr(), p.TCP().SrcPort(), p.DstAddr(), p.TCP().DstPort())
			}
			// A copy viewed through the Layout is the same packet.
			cp := bytes.Clone(pb)
			v := p.Layout().View(cp)
			if v.IsV6() != p.IsV6() || v.IPHeaderLen() != hl || !bytes.Equal(v.Headers(), p.Headers()) ||
				v.PayloadLen() != p.PayloadLen() || !bytes.Equal(v.Payload(), p.Payload()) || v.Tuple() != tu ||
				(len(cp) > 0 && &v.Bytes()[0] != &cp[0]) {
				t.Fatalf("whole=%v: the Layout's view of a copy differs from the decoded packet", whole)
			}
			if whole {
				wholeTuple = tu
			} else if wholeOK && tu != wholeTuple {
				t.Fatalf("Decode and DecodeHeader disagree on the tuple: %v, %v", wholeTuple, tu)
			}

			// Setters never panic; with the whole packet and exact
			// checksums to start from, they keep both checksums exact.
			if whole {
				p.RecomputeChecksums()
				checkChecksumsExact(t, &p, "RecomputeChecksums")
			}
			check := func(op string) {
				if whole {
					checkChecksumsExact(t, &p, op)
				}
			}
			h := binary.BigEndian.Uint32(append(bytes.Clone(data), 0, 0, 0, 0))
			src, dst := netip.AddrFrom4([4]byte{192, 0, 2, byte(h)}), netip.AddrFrom4([4]byte{198, 51, 100, byte(h >> 8)})
			if p.IsV6() {
				src = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(h)})
				dst = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 14: 1, 15: byte(h >> 8)})
			}
			if !p.SetSrc(src, uint16(h)) || !p.SetDst(dst, uint16(h>>16)) {
				t.Fatalf("SetSrc/SetDst refused %v, %v on a v6=%v packet", src, dst, p.IsV6())
			}
			check("SetSrc, SetDst")
			p.SetSeq(h)
			p.SetAck(^h)
			p.SetWindow(uint16(h >> 3))
			p.SetFlags(uint8(h >> 5))
			check("SetSeq, SetAck, SetWindow, SetFlags")
			var o Options
			ParseOptions(p.TCP(), &o)
			if p.SetTimestamps(&o, h, h+1) != o.HasTimestamps() || p.SetMSS(&o, uint16(h)) != o.HasMSS() {
				t.Fatalf("SetTimestamps/SetMSS disagree with ParseOptions")
			}
			check("SetTimestamps, SetMSS")
			p.ClearOptions(OptSACKPermitted, OptSACK)
			check("ClearOptions")
			var o2 Options
			ParseOptions(p.TCP(), &o2)
			if o2.SACK || o2.SACKPermitted || o2.MSS != o.MSS || o2.TSVal != o.TSVal || o2.TSEcr != o.TSEcr {
				t.Fatalf("after ClearOptions: %+v, before %+v", o2, o)
			}
		}
	})
}

// refOptions is an independent parse of an option list (the bytes after
// the fixed TCP header), for FuzzParseOptions.
type refOptions struct {
	ok                  bool
	mss                 uint16
	ws                  uint8
	sackOK, sack        bool
	tsVal, tsEcr        uint32
	hasMSS, hasWS, hsTS bool
	sackKinds           int // options of kind SACK-permitted or SACK
}

func refParseOptions(opts []byte) refOptions {
	var r refOptions
	for len(opts) > 0 {
		switch opts[0] {
		case OptEnd:
			r.ok = true
			return r
		case OptNOP:
			opts = opts[1:]
			continue
		}
		if len(opts) < 2 || opts[1] < 2 || int(opts[1]) > len(opts) {
			return r
		}
		kind, body := opts[0], opts[2:opts[1]]
		switch {
		case kind == OptMSS && len(body) == 2:
			r.mss, r.hasMSS = binary.BigEndian.Uint16(body), true
		case kind == OptWindowScale && len(body) == 1:
			r.ws, r.hasWS = body[0], true
		case kind == OptSACKPermitted && len(body) == 0:
			r.sackOK = true
		case kind == OptSACK:
			r.sack = true
		case kind == OptTimestamps && len(body) == 8:
			r.tsVal, r.tsEcr, r.hsTS = binary.BigEndian.Uint32(body), binary.BigEndian.Uint32(body[4:]), true
		}
		if kind == OptSACKPermitted || kind == OptSACK {
			r.sackKinds++
		}
		opts = opts[opts[1]:]
	}
	r.ok = true
	return r
}

func FuzzParseOptions(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		var p Packet
		if p.Decode(s) == nil {
			f.Add(bytes.Clone(p.TCP().Options()))
		}
	}
	f.Add([]byte{OptMSS, 4, 5, 0xb4, OptSACKPermitted, 2, OptTimestamps, 10, 1, 2, 3, 4, 5, 6, 7, 8, OptNOP, OptWindowScale, 3, 7})
	f.Add([]byte{OptWindowScale, 3, 1, OptTimestamps, 10, 1, 2, 3, 4, 5, 6, 7, 8, OptSACK, 10, 1, 2, 3, 4, 5, 6, 7, 8})
	f.Add([]byte{OptNOP, OptSACK, 0})
	f.Add([]byte{OptNOP, OptNOP, OptNOP, OptTimestamps})
	f.Fuzz(func(t *testing.T, opts []byte) {
		if len(opts) > TCPMaxHeaderLen-TCPMinHeaderLen {
			opts = opts[:TCPMaxHeaderLen-TCPMinHeaderLen]
		}
		tcp := tcpHeader(opts, 0xaa, 0xbb) // payload bytes must not be read
		want := refParseOptions(tcp.Options())
		var o Options
		ok := ParseOptions(tcp, &o)
		got := refOptions{ok, o.MSS, o.WindowScale, o.SACKPermitted, o.SACK, o.TSVal, o.TSEcr,
			o.HasMSS(), o.HasWindowScale(), o.HasTimestamps(), want.sackKinds}
		if got != want {
			t.Fatalf("ParseOptions(% x) = %+v, reference %+v", tcp.Options(), got, want)
		}

		// The same options in a real packet: the option setters keep the
		// checksum exact.
		seg := Segment{
			Src: netip.MustParseAddrPort("192.0.2.1:1"), Dst: netip.MustParseAddrPort("192.0.2.2:2"),
			Options: opts, Payload: []byte{1, 2, 3},
		}
		if len(opts)%2 == 1 {
			seg.Src = netip.MustParseAddrPort("[2001:db8::1]:1")
			seg.Dst = netip.MustParseAddrPort("[2001:db8::2]:2")
		}
		buf := make([]byte, seg.Len())
		n, err := seg.Put(buf)
		if err != nil {
			t.Fatalf("Put: %v", err)
		}
		var p Packet
		if err := p.Decode(buf[:n]); err != nil {
			t.Fatalf("Decode of Put's packet: %v", err)
		}
		checkChecksumsExact(t, &p, "Put")
		ParseOptions(p.TCP(), &o)
		if p.SetTimestamps(&o, 0xdeadbeef, 0x01) != want.hsTS || p.SetMSS(&o, 0x0102) != want.hasMSS {
			t.Fatal("SetTimestamps/SetMSS disagree with the reference parse")
		}
		checkChecksumsExact(t, &p, "SetTimestamps, SetMSS")
		if n := p.ClearOptions(OptSACKPermitted, OptSACK); n != want.sackKinds {
			t.Fatalf("ClearOptions(% x) = %d, reference %d", opts, n, want.sackKinds)
		}
		checkChecksumsExact(t, &p, "ClearOptions")
		after := refParseOptions(p.TCP().Options())
		want.sackOK, want.sack, want.sackKinds = false, false, 0
		if want.hsTS {
			want.tsVal, want.tsEcr = 0xdeadbeef, 0x01
		}
		if want.hasMSS {
			want.mss = 0x0102
		}
		if after != want {
			t.Fatalf("options after setters % x parse as %+v, want %+v", p.TCP().Options(), after, want)
		}
	})
}
