package rewrite

import (
	"bytes"
	"testing"
)

// tcpHeader returns a TCP header carrying opts, padded with end-of-list
// bytes to a multiple of 4, followed by extra bytes of payload.
func tcpHeader(opts []byte, extra ...byte) TCP {
	padded := append(bytes.Clone(opts), make([]byte, (4-len(opts)%4)%4)...)
	t := make([]byte, TCPMinHeaderLen, TCPMinHeaderLen+len(padded)+len(extra))
	t[12] = byte((TCPMinHeaderLen+len(padded))/4) << 4
	t = append(t, padded...)
	return append(t, extra...)
}

func TestParseOptions(t *testing.T) {
	ts := []byte{OptTimestamps, 10, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88}
	type want struct {
		ok                bool
		mss               uint16
		ws                uint8
		sackOK, sack      bool
		tsVal, tsEcr      uint32
		hasMSS, hasWS, hs bool
	}
	for _, tc := range []struct {
		name  string
		opts  []byte
		extra []byte
		want  want
	}{
		{"none", nil, nil, want{ok: true}},
		{"mss", []byte{OptMSS, 4, 0x05, 0xb4}, nil, want{ok: true, mss: 1460, hasMSS: true}},
		{"mss 0", []byte{OptMSS, 4, 0, 0}, nil, want{ok: true, hasMSS: true}},
		{"window scale", []byte{OptNOP, OptWindowScale, 3, 7}, nil, want{ok: true, ws: 7, hasWS: true}},
		{"window scale 0", []byte{OptWindowScale, 3, 0}, nil, want{ok: true, hasWS: true}},
		{"sack permitted", []byte{OptSACKPermitted, 2}, nil, want{ok: true, sackOK: true}},
		{"sack 1 block", []byte{OptNOP, OptNOP, OptSACK, 10, 1, 2, 3, 4, 5, 6, 7, 8}, nil, want{ok: true, sack: true}},
		{"sack 4 blocks", append([]byte{OptSACK, 34}, make([]byte, 32)...), nil, want{ok: true, sack: true}},
		{"timestamps", append([]byte{OptNOP, OptNOP}, ts...), nil,
			want{ok: true, tsVal: 0x11223344, tsEcr: 0x55667788, hs: true}},
		{"timestamps at odd offset", append([]byte{OptWindowScale, 3, 14}, ts...), nil,
			want{ok: true, ws: 14, hasWS: true, tsVal: 0x11223344, tsEcr: 0x55667788, hs: true}},
		{"linux syn", append(append([]byte{OptMSS, 4, 0x05, 0x8c, OptSACKPermitted, 2}, ts...), OptNOP, OptWindowScale, 3, 9), nil,
			want{ok: true, mss: 1420, ws: 9, sackOK: true, tsVal: 0x11223344, tsEcr: 0x55667788, hasMSS: true, hasWS: true, hs: true}},
		{"unknown option skipped", []byte{253, 6, 1, 2, 3, 4, OptMSS, 4, 0x02, 0x18}, nil, want{ok: true, mss: 536, hasMSS: true}},
		{"end of list stops", []byte{OptNOP, OptEnd, OptMSS, 4, 0x05, 0xb4}, nil, want{ok: true}},
		{"mss of wrong length ignored", []byte{OptMSS, 3, 5, OptNOP}, nil, want{ok: true}},
		{"window scale of wrong length ignored", []byte{OptWindowScale, 4, 5, 6}, nil, want{ok: true}},
		{"timestamps of wrong length ignored", []byte{OptTimestamps, 6, 1, 2, 3, 4}, nil, want{ok: true}},
		{"sack permitted of wrong length ignored", []byte{OptSACKPermitted, 3, 0, 0}, nil, want{ok: true}},
		{"length 0", []byte{OptMSS, 0, 5, 0xb4}, nil, want{ok: false}},
		{"length 1", []byte{OptTimestamps, 1, 0, 0}, nil, want{ok: false}},
		{"length 0 of unknown kind", []byte{99, 0, 0, 0}, nil, want{ok: false}},
		{"kind in last byte", []byte{OptNOP, OptNOP, OptNOP, OptMSS}, nil, want{ok: false}},
		{"length past header", []byte{OptNOP, OptNOP, OptSACK, 10}, nil, want{ok: false}},
		// The bytes after the header must not be read as options.
		{"timestamps past header into payload", []byte{OptNOP, OptNOP, OptTimestamps, 10},
			[]byte{0, 0, 0, 1, 0, 0, 0, 2}, want{ok: false}},
		{"mss kept before fault", []byte{OptMSS, 4, 0x05, 0xb4, OptWindowScale, 3, 2, OptSACK, 1}, nil,
			want{ok: false, mss: 1460, ws: 2, hasMSS: true, hasWS: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tcp := tcpHeader(tc.opts, tc.extra...)
			o := Options{MSS: 1, WindowScale: 1, SACKPermitted: true, SACK: true, TSVal: 1, TSEcr: 1} // stale
			ok := ParseOptions(tcp, &o)
			got := want{ok, o.MSS, o.WindowScale, o.SACKPermitted, o.SACK, o.TSVal, o.TSEcr,
				o.HasMSS(), o.HasWindowScale(), o.HasTimestamps()}
			if got != tc.want {
				t.Errorf("ParseOptions(% x) = %+v, want %+v", tc.opts, got, tc.want)
			}
		})
	}
}

// TestParseOptionsNoPanic feeds every truncation of every byte pattern of
// a short option list; ParseOptions must return without panicking.
func TestParseOptionsNoPanic(t *testing.T) {
	for _, n := range []int{1, 2, 3, 4, 5, 8} {
		opts := make([]byte, n)
		for v := range 1 << (8 * min(n, 2)) {
			opts[0] = byte(v)
			if n > 1 {
				opts[1] = byte(v >> 8)
			}
			var o Options
			ParseOptions(tcpHeader(opts), &o)
		}
	}
	// ParseOptions reads up to HeaderLen bytes, so its view must hold the
	// whole header (Packet.TCP guarantees that); vary the header length.
	var o Options
	for hl := TCPMinHeaderLen; hl <= TCPMaxHeaderLen; hl += 4 {
		for _, fill := range []byte{OptEnd, OptNOP, OptMSS, OptSACK, 0xff} {
			opts := bytes.Repeat([]byte{fill}, hl-TCPMinHeaderLen)
			ParseOptions(tcpHeader(opts), &o)
		}
	}
}

func TestAppendOptions(t *testing.T) {
	var b []byte
	b = AppendMSS(b, 1460)
	b = AppendWindowScale(b, 7)
	b = AppendTimestamps(b, 0x01020304, 0x05060708)
	want := []byte{
		2, 4, 0x05, 0xb4,
		1, 3, 3, 7,
		1, 1, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8,
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("appended options\n% x, want\n% x", b, want)
	}
	var o Options
	if !ParseOptions(tcpHeader(b), &o) || o.MSS != 1460 || o.WindowScale != 7 ||
		o.TSVal != 0x01020304 || o.TSEcr != 0x05060708 {
		t.Fatalf("ParseOptions of appended options = %+v", o)
	}
}

func TestTCPGetters(t *testing.T) {
	s := v4Spec()
	s.urgent = 0xbeef
	s.flags = FlagSYN | FlagECE | FlagCWR
	b := s.build(t)
	tcp := TCP(b[s.ipHeaderLen():])
	if tcp.SrcPort() != s.sport || tcp.DstPort() != s.dport || tcp.Seq() != s.seq || tcp.Ack() != s.ack ||
		tcp.HeaderLen() != s.tcpHeaderLen() || tcp.Flags() != s.flags || tcp.Window() != s.window ||
		tcp.Checksum() != refTCPChecksum(s.src, s.dst, tcp) || !bytes.Equal(tcp.Options(), s.rawOptions()) {
		t.Fatal("TCP getters disagree with the model")
	}
	for _, f := range []uint8{FlagFIN, FlagSYN, FlagRST, FlagPSH, FlagACK, FlagURG, FlagECE, FlagCWR} {
		if tcp.Has(f) != (s.flags&f != 0) {
			t.Errorf("Has(%#02x) = %v", f, tcp.Has(f))
		}
	}
}
