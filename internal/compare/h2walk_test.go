package compare

import (
	"bytes"
	"encoding/binary"
	"slices"
	"testing"

	"golang.org/x/net/http2/hpack"
)

// h2ServerStream is a server's side of a multiplexed connection as Go's
// framer writes it: SETTINGS, then interleaved streams: 200 from the
// static table with a long body, 503 as a plain literal in a padded
// HEADERS frame with priority, 418 Huffman-coded, a reset, a status from
// the dynamic table, 404 after a table size update. want are the walked
// (stream, status) pairs.
func h2ServerStream(t testing.TB) (stream []byte, want [][2]uint32) {
	var buf bytes.Buffer
	frame := func(typ, flags byte, stream uint32, p []byte) {
		buf.Write([]byte{byte(len(p) >> 16), byte(len(p) >> 8), byte(len(p)), typ, flags})
		buf.Write(binary.BigEndian.AppendUint32(nil, stream))
		buf.Write(p)
	}
	frame(0x4, 0, 0, nil) // SETTINGS
	hdr := func(stream uint32, block []byte, pad uint8, prio bool) {
		flags, p := byte(0x4), []byte{}
		if pad > 0 {
			flags |= 0x8
			p = append(p, pad)
		}
		if prio {
			flags |= 0x20
			p = append(p, 0, 0, 0, 1, 15)
		}
		p = append(append(p, block...), make([]byte, pad)...)
		frame(0x1, flags, stream, p)
	}
	enc := func(fields ...string) []byte {
		var b bytes.Buffer
		e := hpack.NewEncoder(&b)
		for i := 0; i < len(fields); i += 2 {
			e.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
		}
		return b.Bytes()
	}
	hdr(1, enc(":status", "200", "content-type", "text/plain"), 0, false)
	body := bytes.Repeat([]byte("x"), 16384)
	frame(0x0, 0, 1, body)
	hdr(3, enc(":status", "503"), 7, true)
	frame(0x0, 0, 1, body[:1000])
	huff := hpack.AppendHuffmanString(nil, "418")
	hdr(5, append([]byte{0x48, 0x80 | byte(len(huff))}, huff...), 0, false)
	frame(0x3, 0, 7, []byte{0, 0, 0, 7}) // RST_STREAM, REFUSED_STREAM
	frame(0x8, 0, 0, []byte{0, 1, 0, 0}) // WINDOW_UPDATE
	frame(0x0, 1, 1, body[:10])
	hdr(9, []byte{0xbe}, 0, false) // the dynamic table's first entry
	hdr(11, []byte{0x3f, 0xe1, 0x1f, 0x8d}, 0, false)
	frame(0x0, 1, 3, nil)
	return buf.Bytes(), [][2]uint32{{1, 200}, {3, 503}, {5, 418}, {7, uint32(H2StatusReset)}, {9, 0}, {11, 404}}
}

// walkStatuses walks stream from seq 1000, cut into pieces of k bytes,
// each fed twice when dup (a retransmission), and returns the (stream,
// status) of its events.
func walkStatuses(w *H2Walker, stream []byte, k int, dup bool) [][2]uint32 {
	var got [][2]uint32
	var out [8]H2Event
	for off := 0; off < len(stream); off += k {
		piece := stream[off:min(off+k, len(stream))]
		for range 1 + btoi(dup) {
			n := w.Walk(uint32(1000+off), piece, out[:])
			for _, e := range out[:n] {
				st := uint32(H2Status(e.HeaderBlock()))
				if e.Kind == H2EventReset {
					st = uint32(H2StatusReset)
				}
				got = append(got, [2]uint32{e.Stream, st})
			}
		}
	}
	return got
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestH2WalkerServer: every HEADERS frame's status and the reset, in
// order, however the stream is cut, retransmissions skipped; a gap loses
// sync for good.
func TestH2WalkerServer(t *testing.T) {
	stream, want := h2ServerStream(t)
	for _, k := range []int{1, 7, 1448, 65536} {
		for _, dup := range []bool{false, true} {
			var w H2Walker
			if got := walkStatuses(&w, stream, k, dup); !slices.Equal(got, want) || w.Lost() || w.Dropped() != 0 {
				t.Errorf("pieces of %d, dup %v: %v (lost %v), want %v", k, dup, got, w.Lost(), want)
			}
		}
	}
	var w H2Walker
	var out [8]H2Event
	w.Walk(1, stream[:100], out[:])
	if n := w.Walk(200, stream[199:], out[:]); n != 0 || !w.Lost() {
		t.Errorf("after a gap: %d events, lost %v", n, w.Lost())
	}
	// More events than out holds: counted.
	w = H2Walker{}
	if n := w.Walk(1, stream, out[:2]); n != 2 || w.Dropped() != uint32(len(want)-2) {
		t.Errorf("%d events into 2 slots, dropped %d", n, w.Dropped())
	}
}

// TestH2WalkerClient: the client's preface is skipped and each request's
// HEADERS frame comes out with its header block, which names the path.
func TestH2WalkerClient(t *testing.T) {
	var buf bytes.Buffer
	buf.WriteString(h2Preface)
	buf.Write([]byte{0, 0, 0, 0x4, 0, 0, 0, 0, 0}) // SETTINGS
	var blk bytes.Buffer
	e := hpack.NewEncoder(&blk)
	for i, p := range []string{"/fail/1", "/ok/2"} {
		blk.Reset()
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", p}, {":authority", "shop"}} {
			e.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		buf.Write([]byte{0, 0, byte(blk.Len()), 0x1, 0x5, 0, 0, 0, byte(1 + 2*i)})
		buf.Write(blk.Bytes())
	}
	w := ClientH2Walker()
	var out [4]H2Event
	n := w.Walk(1, buf.Bytes(), out[:])
	if n != 2 || w.Lost() {
		t.Fatalf("%d events, lost %v", n, w.Lost())
	}
	var f [128]byte
	req := AppendH2Request(f[:0], &out[0])
	if line := h2RequestLine(req); line != "GET /fail/1" {
		t.Errorf("request line %q from %x", line, req)
	}
	if bad := ClientH2Walker(); bad.Walk(1, []byte("GET / HTTP/1.1\r\n"), out[:]) != 0 || !bad.Lost() {
		t.Error("no preface: not lost")
	}
}

// TestH2StatusFrame: the frames written for each status classify as it.
func TestH2StatusFrame(t *testing.T) {
	var dst [16]byte
	for _, c := range []struct {
		status uint16
		class  string
	}{{200, "200"}, {500, "500"}, {404, "404"}, {503, "503"}, {418, "4xx"}, {H2StatusReset, classH2StreamReset}, {H2StatusUnknown, ClassAnswered}} {
		b := H2StatusFrame(&dst, 7, c.status)
		if got := classifyHTTP2(b, 7); got != c.class {
			t.Errorf("%d: %q (%x), want %q", c.status, got, b, c.class)
		}
		if c.status >= 100 {
			if got := H2Status(b[9:]); got != c.status {
				t.Errorf("H2Status(%x) = %d, want %d", b[9:], got, c.status)
			}
		}
	}
}

// TestH2WalkNoAllocs: walking a super-packet of frames allocates nothing.
func TestH2WalkNoAllocs(t *testing.T) {
	stream, _ := h2ServerStream(t)
	var out [8]H2Event
	if n := testing.AllocsPerRun(100, func() {
		var w H2Walker
		for _, e := range out[:w.Walk(1, stream, out[:])] {
			H2Status(e.HeaderBlock())
		}
	}); n != 0 {
		t.Errorf("%v allocations per walk", n)
	}
}

// FuzzH2Walk walks any bytes cut anywhere, as a client's or a server's
// direction: never a panic, events within out, H2Status of any bytes and
// of any walked block in range.
func FuzzH2Walk(f *testing.F) {
	stream, _ := h2ServerStream(f)
	f.Add(stream[:300], uint16(40), false)
	f.Add([]byte(h2Preface+"\x00\x00\x00\x04\x00\x00\x00\x00\x00"), uint16(5), true)
	f.Fuzz(func(t *testing.T, b []byte, cut uint16, client bool) {
		w := H2Walker{}
		if client {
			w = ClientH2Walker()
		}
		if st := H2Status(b); st != 0 && (st < 100 || st > 599) {
			t.Fatalf("status %d of %x", st, b)
		}
		var out [3]H2Event
		k := int(cut)%512 + 1
		for off := 0; off < len(b); off += k {
			n := w.Walk(uint32(off), b[off:min(off+k, len(b))], out[:])
			if n > len(out) {
				t.Fatalf("%d events", n)
			}
			for _, e := range out[:n] {
				if st := H2Status(e.HeaderBlock()); st != 0 && (st < 100 || st > 599) {
					t.Fatalf("status %d", st)
				}
			}
		}
	})
}
