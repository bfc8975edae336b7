package rewrite

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
)

// dirty returns a buffer of n bytes of garbage, so a byte Put forgets to
// write shows.
func dirty(n int) []byte { return bytes.Repeat([]byte{0xa5}, n) }

func TestSegmentPut(t *testing.T) {
	var syn []byte
	syn = AppendMSS(syn, 1460)
	syn = append(syn, OptSACKPermitted, 2)
	syn = AppendTimestamps(syn, 1000, 0)
	syn = AppendWindowScale(syn, 7)
	sack3 := append([]byte{OptSACK, 26}, bytes.Repeat([]byte{0x5a}, 24)...)
	payload := bytes.Repeat([]byte("0123456789abcdef"), 91)[:1456]

	v4a, v4b := netip.MustParseAddrPort("10.1.2.3:5555"), netip.MustParseAddrPort("192.0.2.80:80")
	v6a, v6b := netip.MustParseAddrPort("[fd00::1:2]:5555"), netip.MustParseAddrPort("[2001:db8::80]:80")
	for _, tc := range []struct {
		name string
		seg  Segment
		opts []tcpOpt // the model of seg.Options
	}{
		{"v4 syn", Segment{Src: v4a, Dst: v4b, Seq: 0xfffffff0, Flags: FlagSYN | FlagECE | FlagCWR, Window: 64240, Options: syn, ID: 77},
			[]tcpOpt{{OptMSS, []byte{0x05, 0xb4}}, {OptSACKPermitted, nil}, {OptNOP, nil}, {OptNOP, nil},
				{OptTimestamps, []byte{0, 0, 0x03, 0xe8, 0, 0, 0, 0}}, {OptNOP, nil}, {OptWindowScale, []byte{7}}}},
		{"v4 data", Segment{Src: v4a, Dst: v4b, Seq: 1, Ack: 2, Flags: FlagACK | FlagPSH, Window: 501, Payload: payload, TTL: 200, ID: 0xffff},
			nil},
		{"v4 odd payload, unpadded option", Segment{Src: v4a, Dst: v4b, Flags: FlagRST, Options: []byte{OptWindowScale, 3, 14}, Payload: []byte("abc")},
			[]tcpOpt{{OptWindowScale, []byte{14}}}},
		{"v4 40 bytes of options", Segment{Src: v4a, Dst: v4b, Flags: FlagACK, Options: append(append(AppendMSS(nil, 536), OptTimestamps, 10, 0, 0, 0, 5, 0, 0, 0, 6), sack3...)},
			[]tcpOpt{{OptMSS, []byte{0x02, 0x18}}, {OptTimestamps, []byte{0, 0, 0, 5, 0, 0, 0, 6}},
				{OptSACK, bytes.Repeat([]byte{0x5a}, 24)}}},
		{"v6 syn-ack", Segment{Src: v6a, Dst: v6b, Seq: 7, Ack: 0x80000000, Flags: FlagSYN | FlagACK, Window: 65535, Options: syn},
			[]tcpOpt{{OptMSS, []byte{0x05, 0xb4}}, {OptSACKPermitted, nil}, {OptNOP, nil}, {OptNOP, nil},
				{OptTimestamps, []byte{0, 0, 0x03, 0xe8, 0, 0, 0, 0}}, {OptNOP, nil}, {OptWindowScale, []byte{7}}}},
		{"v6 data", Segment{Src: v6a, Dst: v6b, Seq: 3, Ack: 4, Flags: FlagACK, Payload: payload, TTL: 1},
			nil},
		{"v6 37 bytes of options", Segment{Src: v6a, Dst: v6b, Flags: FlagACK | FlagFIN, Options: append([]byte{OptWindowScale, 3, 1}, append([]byte{OptSACK, 34}, make([]byte, 32)...)...), Payload: []byte{0}},
			[]tcpOpt{{OptWindowScale, []byte{1}}, {OptSACK, make([]byte, 32)}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seg := tc.seg
			ttl := seg.TTL
			if ttl == 0 {
				ttl = 64
			}
			want := &pktSpec{
				v6:  !seg.Src.Addr().Is4(),
				src: seg.Src.Addr(), dst: seg.Dst.Addr(), sport: seg.Src.Port(), dport: seg.Dst.Port(),
				seq: seg.Seq, ack: seg.Ack, flags: seg.Flags, window: seg.Window,
				ttl: ttl, id: seg.ID, df: true, opts: tc.opts, payload: seg.Payload,
			}
			wantLen := want.ipHeaderLen() + want.tcpHeaderLen() + len(seg.Payload)
			buf := dirty(wantLen + 10)
			n, err := seg.Put(buf)
			if err != nil {
				t.Fatalf("Put: %v", err)
			}
			if n != wantLen || seg.Len() != wantLen {
				t.Fatalf("Put wrote %d bytes, Len() = %d, want %d", n, seg.Len(), wantLen)
			}
			if !bytes.Equal(buf[n:], dirty(10)) {
				t.Fatalf("Put wrote past %d bytes", n)
			}
			checkAgainstSpec(t, buf[:n], want)
			var p Packet
			if err := p.Decode(buf[:n]); err != nil {
				t.Fatalf("Decode of Put's packet: %v", err)
			}
			if !p.ChecksumValid() {
				t.Fatal("ChecksumValid() = false")
			}
			// Exactly the right size buffer is enough.
			exact := dirty(wantLen)
			if n, err := seg.Put(exact); err != nil || n != wantLen || !bytes.Equal(exact, buf[:n]) {
				t.Fatalf("Put into an exact buffer = %d, %v", n, err)
			}
		})
	}
}

func TestSegmentPutErrors(t *testing.T) {
	v4 := netip.MustParseAddrPort("10.0.0.1:1")
	v6 := netip.MustParseAddrPort("[2001:db8::1]:1")
	mapped := netip.AddrPortFrom(netip.AddrFrom16(v4.Addr().As16()), 1)
	for _, tc := range []struct {
		name string
		seg  Segment
		buf  int // buffer length; -1 for seg.Len()-1
		want error
	}{
		{"v4 to v6", Segment{Src: v4, Dst: v6}, 100, errFamily},
		{"v6 to v4", Segment{Src: v6, Dst: v4}, 100, errFamily},
		{"mapped to v4", Segment{Src: mapped, Dst: v4}, 100, errFamily},
		{"41 bytes of options", Segment{Src: v4, Dst: v4, Options: make([]byte, 41)}, 200, errOptionsLen},
		{"44 bytes of options", Segment{Src: v6, Dst: v6, Options: make([]byte, 44)}, 200, errOptionsLen},
		{"short v4 buffer", Segment{Src: v4, Dst: v4, Payload: make([]byte, 10)}, -1, errShortBuf},
		{"short v6 buffer", Segment{Src: v6, Dst: v6, Options: []byte{1}}, -1, errShortBuf},
		{"nil buffer", Segment{Src: v4, Dst: v4}, 0, errShortBuf},
		// The IP length field holds 16 bits.
		{"v4 over 65535 bytes", Segment{Src: v4, Dst: v4, Payload: make([]byte, 65535-40+1)}, 70000, errTooLong},
		{"v6 payload over 65535 bytes", Segment{Src: v6, Dst: v6, Payload: make([]byte, 65535-20+1)}, 70000, errTooLong},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := tc.buf
			if n < 0 {
				n = tc.seg.Len() - 1
			}
			buf := dirty(n)
			got, err := tc.seg.Put(buf)
			if !errors.Is(err, tc.want) || got != 0 {
				t.Fatalf("Put = %d, %v, want 0, %v", got, err, tc.want)
			}
			if !bytes.Equal(buf, dirty(n)) {
				t.Fatal("failed Put wrote to the buffer")
			}
		})
	}
}

// TestSegmentPutMaxLen builds the largest segments the IP length fields
// allow.
func TestSegmentPutMaxLen(t *testing.T) {
	for _, tc := range []struct {
		src, dst netip.AddrPort
		payload  int
	}{
		{netip.MustParseAddrPort("10.0.0.1:1"), netip.MustParseAddrPort("10.0.0.2:2"), 65535 - 40},
		{netip.MustParseAddrPort("[2001:db8::1]:1"), netip.MustParseAddrPort("[2001:db8::2]:2"), 65535 - 20},
	} {
		seg := Segment{Src: tc.src, Dst: tc.dst, Flags: FlagACK, Payload: bytes.Repeat([]byte{0xee}, tc.payload)}
		buf := make([]byte, seg.Len())
		n, err := seg.Put(buf)
		if err != nil {
			t.Fatalf("Put %d-byte payload: %v", tc.payload, err)
		}
		want := &pktSpec{
			v6: !tc.src.Addr().Is4(), src: tc.src.Addr(), dst: tc.dst.Addr(), sport: 1, dport: 2,
			flags: FlagACK, ttl: 64, df: true, payload: seg.Payload,
		}
		checkAgainstSpec(t, buf[:n], want)
	}
}
