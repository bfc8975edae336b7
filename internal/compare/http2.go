package compare

import (
	"bytes"
	"encoding/binary"

	"golang.org/x/net/http2/hpack"
)

// HTTP/2 frames (RFC 9113 §4.1): a 9-byte header, then the payload.
const (
	h2FrameHeaderLen = 9
	h2LengthOffset   = 0 // 24 bits
	h2TypeOffset     = 3
	h2FlagsOffset    = 4
	h2StreamOffset   = 5 // 31 bits after a reserved bit

	h2Data         = 0x0
	h2Headers      = 0x1
	h2RSTStream    = 0x3
	h2GoAway       = 0x7
	h2Continuation = 0x9

	// h2MaxFrameLen is SETTINGS_MAX_FRAME_SIZE's initial value (RFC 9113
	// §6.5.2): a longer frame is not HTTP/2 unless the client raised it,
	// which the clients that matter do not.
	h2MaxFrameLen = 1 << 14

	h2FlagPadded   = 0x8
	h2FlagPriority = 0x20
	h2PriorityLen  = 5 // stream dependency and weight
)

// Classes of HTTP/2 responses that carry no status.
const (
	classH2StreamReset = "rst_stream"
	classH2GoAway      = "goaway"
)

// h2Frame is a view of one frame header and its payload, the payload cut
// where the bytes end.
type h2Frame struct {
	typ, flags byte
	length     int // as the header says
	stream     uint32
	payload    []byte
	whole      bool // the payload is all there
}

// nextH2Frame splits the first frame off b; ok is false when b holds
// less than a frame header.
func nextH2Frame(b []byte) (f h2Frame, rest []byte, ok bool) {
	if len(b) < h2FrameHeaderLen {
		return f, nil, false
	}
	n := int(b[h2LengthOffset])<<16 | int(b[h2LengthOffset+1])<<8 | int(b[h2LengthOffset+2])
	f.typ, f.flags, f.length = b[h2TypeOffset], b[h2FlagsOffset], n
	f.stream = binary.BigEndian.Uint32(b[h2StreamOffset:]) & 0x7fffffff
	b = b[h2FrameHeaderLen:]
	if n <= len(b) {
		f.payload, f.whole, rest = b[:n], true, b[n:]
	} else {
		f.payload = b
	}
	return f, rest, true
}

// headerBlock returns the header block fragment of a HEADERS frame,
// without its padding length and priority fields; ok is false when they
// are cut or wrong.
func (f h2Frame) headerBlock() ([]byte, bool) {
	p := f.payload
	pad := 0
	if f.flags&h2FlagPadded != 0 {
		if len(p) < 1 {
			return nil, false
		}
		pad, p = int(p[0]), p[1:]
	}
	if f.flags&h2FlagPriority != 0 {
		if len(p) < h2PriorityLen {
			return nil, false
		}
		p = p[h2PriorityLen:]
	}
	if f.whole {
		if pad > len(p) {
			return nil, false
		}
		p = p[:len(p)-pad]
	}
	return p, true
}

// firstHeaders skips the frames before the first HEADERS frame of stream
// (any stream for 0): SETTINGS, WINDOW_UPDATE, PING, PRIORITY,
// PUSH_PROMISE, unknown types, and other streams' frames, which a
// multiplexing connection interleaves. It returns the header block, or
// the class when something else decides: the stream reset, GOAWAY, DATA
// first (garbage), too few bytes (short).
func firstHeaders(b []byte, stream uint32) (block []byte, class string) {
	for {
		f, rest, ok := nextH2Frame(b)
		if !ok {
			return nil, ClassShort
		}
		if f.length > h2MaxFrameLen {
			return nil, ClassGarbage
		}
		other := stream != 0 && f.stream != stream && f.stream != 0
		switch {
		case other && (f.typ == h2Headers || f.typ == h2Data || f.typ == h2RSTStream || f.typ == h2Continuation):
			// another stream's: skip it
		case f.typ == h2Headers:
			if f.stream == 0 {
				return nil, ClassGarbage
			}
			blk, ok := f.headerBlock()
			if !ok {
				return nil, ClassShort
			}
			return blk, ""
		case f.typ == h2RSTStream:
			return nil, classH2StreamReset
		case f.typ == h2GoAway:
			return nil, classH2GoAway
		case f.typ == h2Data, f.typ == h2Continuation:
			return nil, ClassGarbage
		}
		if !f.whole {
			return nil, ClassShort
		}
		b = rest
	}
}

// h2RequestStream returns the stream of the first HEADERS frame in a
// request's bytes (after the preface, if there), 0 when the head holds
// none: then a response's first HEADERS frame is taken, whatever stream.
func h2RequestStream(req []byte) uint32 {
	b := bytes.TrimPrefix(req, []byte(h2Preface))
	for {
		f, rest, ok := nextH2Frame(b)
		if !ok || f.length > h2MaxFrameLen {
			return 0
		}
		if f.typ == h2Headers {
			return f.stream
		}
		if !f.whole {
			return 0
		}
		b = rest
	}
}

// classifyHTTP2 returns the :status of the first HEADERS frame of stream
// (0: any) in a server's bytes, the class of what came instead, or "answered" when the
// status is a reference into the connection's dynamic table (which a
// head alone cannot resolve).
func classifyHTTP2(b []byte, stream uint32) string {
	block, class := firstHeaders(b, stream)
	if class != "" {
		return class
	}
	f, _, err := nextHPACKField(block)
	switch {
	case err == errHPACKShort:
		return ClassShort
	case err == errHPACKDynamic:
		return ClassAnswered
	case err != nil:
		return ClassGarbage
	case f.name != ":status":
		return ClassGarbage // RFC 9113 §8.3: pseudo-headers first, :status the only one
	}
	code := 0
	if len(f.value) != 3 {
		return ClassGarbage
	}
	for _, c := range f.value {
		if c < '0' || c > '9' {
			return ClassGarbage
		}
		code = code*10 + int(c-'0')
	}
	return statusClass(code)
}

// hpackStatic is the start of HPACK's static table (RFC 7541 Appendix A):
// the pseudo-headers, all a head's classes and summaries read.
var hpackStatic = [...]struct{ name, value string }{
	1: {":authority", ""}, 2: {":method", "GET"}, 3: {":method", "POST"}, 4: {":path", "/"},
	5: {":path", "/index.html"}, 6: {":scheme", "http"}, 7: {":scheme", "https"},
	8: {":status", "200"}, 9: {":status", "204"}, 10: {":status", "206"}, 11: {":status", "304"},
	12: {":status", "400"}, 13: {":status", "404"}, 14: {":status", "500"},
}

// hpackStaticLen is the static table's size; indexes above it are the
// dynamic table's.
const hpackStaticLen = 61

type hpackErr string

func (e hpackErr) Error() string { return string(e) }

const (
	errHPACKShort   = hpackErr("hpack: cut short")
	errHPACKDynamic = hpackErr("hpack: dynamic table reference")
	errHPACKBad     = hpackErr("hpack: malformed")
)

// maxHPACKString bounds a decoded string: a head holds no more anyway.
const maxHPACKString = MaxPrefix

// hpackField is one decoded header field; name is empty for a regular
// header of the static table (index 15..61), which ends the
// pseudo-headers.
type hpackField struct{ name, value string }

// nextHPACKField decodes the first header field of a block, after any
// dynamic table size updates.
func nextHPACKField(b []byte) (hpackField, []byte, error) {
	for {
		if len(b) == 0 {
			return hpackField{}, nil, errHPACKShort
		}
		c := b[0]
		switch {
		case c&0x80 != 0: // indexed field
			idx, rest, err := hpackInt(b, 7)
			if err != nil {
				return hpackField{}, nil, err
			}
			f, err := hpackIndexed(idx, true)
			return f, rest, err
		case c&0xc0 == 0x40: // literal with incremental indexing
			return hpackLiteral(b, 6)
		case c&0xe0 == 0x20: // dynamic table size update
			_, rest, err := hpackInt(b, 5)
			if err != nil {
				return hpackField{}, nil, err
			}
			b = rest
		default: // literal without indexing (0000) or never indexed (0001)
			return hpackLiteral(b, 4)
		}
	}
}

func hpackIndexed(idx uint64, withValue bool) (hpackField, error) {
	switch {
	case idx == 0:
		return hpackField{}, errHPACKBad
	case idx > hpackStaticLen:
		return hpackField{}, errHPACKDynamic
	case idx >= uint64(len(hpackStatic)):
		return hpackField{}, nil // a regular header
	}
	f := hpackField{name: hpackStatic[idx].name}
	if withValue {
		f.value = hpackStatic[idx].value
	}
	return f, nil
}

func hpackLiteral(b []byte, prefix uint) (hpackField, []byte, error) {
	idx, b, err := hpackInt(b, prefix)
	if err != nil {
		return hpackField{}, nil, err
	}
	var f hpackField
	if idx == 0 {
		if f.name, b, err = hpackString(b); err != nil {
			return hpackField{}, nil, err
		}
	} else if f, err = hpackIndexed(idx, false); err != nil {
		return hpackField{}, nil, err
	}
	f.value, b, err = hpackString(b)
	return f, b, err
}

// hpackInt decodes an integer with an N-bit prefix (RFC 7541 §5.1),
// bounded to 2^28 so that no input overflows it.
func hpackInt(b []byte, n uint) (uint64, []byte, error) {
	if len(b) == 0 {
		return 0, nil, errHPACKShort
	}
	max := uint64(1)<<n - 1
	v := uint64(b[0]) & max
	b = b[1:]
	if v < max {
		return v, b, nil
	}
	for shift := uint(0); ; shift += 7 {
		if len(b) == 0 {
			return 0, nil, errHPACKShort
		}
		if shift > 21 {
			return 0, nil, errHPACKBad
		}
		c := b[0]
		b = b[1:]
		v += uint64(c&0x7f) << shift
		if c&0x80 == 0 {
			return v, b, nil
		}
	}
}

// hpackString decodes a string literal (RFC 7541 §5.2), Huffman-coded or
// not; one cut by the head's end is errHPACKShort.
func hpackString(b []byte) (string, []byte, error) {
	if len(b) == 0 {
		return "", nil, errHPACKShort
	}
	huff := b[0]&0x80 != 0
	n, b, err := hpackInt(b, 7)
	if err != nil {
		return "", nil, err
	}
	if n > maxHPACKString {
		return "", nil, errHPACKBad
	}
	if uint64(len(b)) < n {
		return "", nil, errHPACKShort
	}
	s, rest := b[:n], b[n:]
	if !huff {
		return string(s), rest, nil
	}
	var out bytes.Buffer
	if _, err := hpack.HuffmanDecode(&out, s); err != nil {
		return "", nil, errHPACKBad
	}
	return out.String(), rest, nil
}

// h2RequestLine returns "METHOD PATH" from a client's first HEADERS frame
// (after the preface and SETTINGS), or "" when the head does not hold it.
func h2RequestLine(b []byte) string {
	b = bytes.TrimPrefix(b, []byte(h2Preface))
	block, class := firstHeaders(b, 0)
	if class != "" {
		return ""
	}
	var method, path string
	for len(block) > 0 && (method == "" || path == "") {
		f, rest, err := nextHPACKField(block)
		if err != nil || (f.name != "" && f.name[0] != ':') || f.name == "" {
			break
		}
		switch f.name {
		case ":method":
			method = f.value
		case ":path":
			path = f.value
		}
		block = rest
	}
	if method == "" {
		return ""
	}
	return method + " " + path
}
