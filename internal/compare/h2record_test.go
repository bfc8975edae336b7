package compare

import (
	"bytes"
	"testing"
)

// TestH2RecordRoundTrip: every record H2StatusFrame writes parses back
// to its stream and status, one after the other; anything else is
// refused.
func TestH2RecordRoundTrip(t *testing.T) {
	var all []byte
	var want []H2Record
	var dst [16]byte
	for i, st := range []uint16{200, 204, 206, 304, 400, 404, 500, 201, 302, 418, 503, 599, 100, H2StatusReset, H2StatusUnknown} {
		r := H2Record{Stream: uint32(2*i + 1), Status: st}
		all = append(all, H2StatusFrame(&dst, r.Stream, st)...)
		want = append(want, r)
	}
	all = append(all, H2LostRecord...)
	want = append(want, H2Record{Status: H2StatusLost})
	if !ValidH2Records(all) || !ValidH2Records(nil) {
		t.Fatal("records refused")
	}
	b := all
	for i, w := range want {
		r, rest, ok := ParseH2Record(b)
		if !ok || r != w {
			t.Fatalf("record %d: %+v %v, want %+v", i, r, ok, w)
		}
		b = rest
	}
	for _, bad := range [][]byte{
		all[:len(all)-1],                                // cut short
		[]byte("HTTP/1.1 200 OK\r\n\r\n"),               // a prefix, not records
		{0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100}, // SETTINGS
		{0, 0, 1, 1, 4, 0, 0, 0, 0, 0x88},               // stream 0
		{0, 0, 1, 1, 4, 0, 0, 0, 1, 0x82},               // :method GET
		{0, 0, 2, 1, 4, 0, 0, 0, 1, 0x88, 0x88},         // longer than a record
		{0, 0, 4, 0, 0, 0, 0, 0, 1, 'a', 'b', 'c', 'd'}, // DATA
	} {
		if ValidH2Records(bad) {
			t.Errorf("%x taken for records", bad)
		}
	}
}

// FuzzH2Record: any bytes parse without a panic; a record parsed is
// written back the same by H2StatusFrame, bar a status's encoding.
func FuzzH2Record(f *testing.F) {
	var dst [16]byte
	f.Add(H2StatusFrame(&dst, 1, 200))
	f.Add(H2StatusFrame(&dst, 3, 503))
	f.Add(H2StatusFrame(&dst, 5, H2StatusReset))
	f.Add([]byte("HTTP/1.1 200 OK\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ValidH2Records(b)
		r, rest, ok := ParseH2Record(b)
		if !ok {
			if !bytes.Equal(rest, b) {
				t.Fatal("a refusal consumed bytes")
			}
			return
		}
		if len(rest) >= len(b) || (r.Stream == 0) != (r.Status == H2StatusLost) {
			t.Fatalf("record %+v consumed nothing, or stream 0", r)
		}
		if r.Status == H2StatusLost {
			return
		}
		again, _, ok := ParseH2Record(H2StatusFrame(&dst, r.Stream, r.Status))
		if !ok || again != r {
			t.Fatalf("record %+v written back parses as %+v %v", r, again, ok)
		}
	})
}
