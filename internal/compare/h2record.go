package compare

import "encoding/binary"

// H2 records are how an HTTP/2 connection's answers travel compactly: one
// small frame per HEADERS or RST_STREAM frame walked (H2StatusFrame
// writes them), as the intercept agent relays the shadow's in place of a
// reply's payload prefix. They must not be mistaken for anything else:
// ParseH2Record takes only the exact shapes H2StatusFrame writes.

// H2Record is one record: a stream's :status, or its reset
// (H2StatusReset), or H2StatusUnknown for a status out of reach.
type H2Record struct {
	Stream uint32
	Status uint16
}

// H2StatusLost is the status of the record that says the walk lost sync:
// the records of that connection stop there (H2LostRecord).
const H2StatusLost uint16 = 2

// H2LostRecord is the record a walk that lost sync relays instead of any:
// a GOAWAY frame with no payload on stream 0, a shape no HTTP/2 frame has
// (a GOAWAY holds 8 bytes at least, RFC 9113 §6.8).
const H2LostRecord = "\x00\x00\x00\x07\x00\x00\x00\x00\x00"

// h2RecordMax is the longest record H2StatusFrame writes.
const h2RecordMax = h2FrameHeaderLen + 5

// ParseH2Record parses the record b begins with and returns the rest; ok
// is false when b does not begin with one: a frame of another type or
// shape, stream 0 (but H2LostRecord's), or cut short. It never allocates.
func ParseH2Record(b []byte) (r H2Record, rest []byte, ok bool) {
	if len(b) < h2FrameHeaderLen {
		return H2Record{}, b, false
	}
	n := int(b[h2LengthOffset])<<16 | int(b[h2LengthOffset+1])<<8 | int(b[h2LengthOffset+2])
	if n > h2RecordMax-h2FrameHeaderLen || len(b) < h2FrameHeaderLen+n {
		return H2Record{}, b, false
	}
	r.Stream = binary.BigEndian.Uint32(b[h2StreamOffset:]) & 0x7fffffff
	typ, p := b[h2TypeOffset], b[h2FrameHeaderLen:h2FrameHeaderLen+n]
	rest = b[h2FrameHeaderLen+n:]
	if string(b[:h2FrameHeaderLen]) == H2LostRecord {
		return H2Record{Status: H2StatusLost}, rest, true
	}
	if r.Stream == 0 {
		return H2Record{}, b, false
	}
	switch {
	case typ == h2RSTStream && n == 4:
		r.Status = H2StatusReset
	case typ == h2Headers && n == 1 && p[0] == 0x80|byte(hpackStaticLen+1):
		r.Status = H2StatusUnknown
	case typ == h2Headers && (n == 1 || n == 5):
		if r.Status = H2Status(p); r.Status == H2StatusUnknown {
			return H2Record{}, b, false
		}
	default:
		return H2Record{}, b, false
	}
	return r, rest, true
}

// ValidH2Records reports whether b is whole records and nothing else
// (none is valid): a reply whose payload holds anything else is not the
// agent's records (an agent relaying a prefix: a flow it does not walk).
func ValidH2Records(b []byte) bool {
	for len(b) > 0 {
		var ok bool
		if _, b, ok = ParseH2Record(b); !ok {
			return false
		}
	}
	return true
}
