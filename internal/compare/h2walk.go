package compare

import "encoding/binary"

// Walking HTTP/2 by stream. On a multiplexed connection rounds of the
// pacing say nothing of requests: responses of many streams interleave,
// and segments coalesce (GSO, GRO) into super-packets a prefix sees the
// first frame of. So each direction of a connection is walked frame by
// frame, in sequence order, over the full payloads, and its HEADERS
// frames come out as events: (stream, the first bytes of the header
// block), or a RST_STREAM. The client's open requests, the server's
// carry the :status first (RFC 9113 §8.3.2), which H2Status reads.
//
// The walker copies at most H2BlockLen bytes per HEADERS frame, keeps no
// other bytes and never allocates. It is tolerant: bytes at or below
// what it already walked (retransmissions) are skipped by sequence; a
// gap loses sync, for good: the connection's HTTP/2 comparison stops
// there, counted by the caller (Lost).

// H2BlockLen bounds the header block bytes an H2Event keeps: enough for
// :method, :scheme and a :path of a few dozen bytes.
const H2BlockLen = 96

// H2 event kinds.
const (
	H2EventHeaders uint8 = iota + 1 // a HEADERS frame
	H2EventReset                    // a RST_STREAM frame
)

// H2Event is one HEADERS or RST_STREAM frame of a walked direction.
type H2Event struct {
	Stream   uint32
	Kind     uint8
	Flags    byte // the frame's flags (END_STREAM 0x1)
	BlockLen uint8
	Block    [H2BlockLen]byte // the header block's first bytes
}

// HeaderBlock returns the kept header block bytes.
func (e *H2Event) HeaderBlock() []byte { return e.Block[:min(int(e.BlockLen), H2BlockLen)] }

// H2Walker walks one direction of an HTTP/2 connection. The zero value
// walks a server's direction from the first byte it is given; Client
// makes one that skips the client's connection preface first.
type H2Walker struct {
	next    uint32 // the sequence number of the next byte to walk
	started bool
	lost    bool
	state   uint8
	hn      uint8
	hdr     [h2FrameHeaderLen]byte
	remain  int // payload bytes of the current frame still to come
	pad     int // of those, padding at the end
	prio    int // priority bytes still to skip
	preface int // preface bytes still to skip
	want    int // header block bytes still to keep
	ev      H2Event
	losses  uint32
	dropped uint32
}

// Walker states.
const (
	h2sHeader uint8 = iota // reading a frame header
	h2sPadLen              // HEADERS: the pad length byte
	h2sPrio                // HEADERS: priority fields
	h2sBlock               // HEADERS: the header block
	h2sSkip                // the rest of a frame's payload
)

// h2MaxWalkedFrame bounds a frame's length: SETTINGS_MAX_FRAME_SIZE's
// largest value (RFC 9113 §6.5.2). A longer one is not HTTP/2: sync lost.
const h2MaxWalkedFrame = 1<<24 - 1

// ClientH2Walker returns a walker of a client's direction, which begins
// with the connection preface.
func ClientH2Walker() H2Walker { return H2Walker{preface: len(h2Preface)} }

// Start sets the sequence number of the direction's first byte, when
// known (the SYN's plus one): a first segment lost then loses sync too.
func (w *H2Walker) Start(seq uint32) { w.next, w.started = seq, true }

// Lost reports whether the walker lost sync for good.
func (w *H2Walker) Lost() bool { return w.lost }

// Lose makes the walker lose sync for good: its caller saw a gap the
// sequence numbers do not show (a segment cut by the capture).
func (w *H2Walker) Lose() { w.lose() }

// Dropped returns how many events did not fit the out slices given.
func (w *H2Walker) Dropped() uint32 { return w.dropped }

// Walk takes one segment's payload b at sequence number seq, all of it
// (not a prefix), and writes the events of the frames it completes to
// out; it returns how many it wrote. Events past len(out) are counted
// (Dropped) and lost.
func (w *H2Walker) Walk(seq uint32, b []byte, out []H2Event) int {
	if w.lost || len(b) == 0 {
		return 0
	}
	if !w.started {
		w.Start(seq)
	}
	switch d := int32(seq - w.next); {
	case d > 0:
		w.lose() // a gap: what is missing may hold any frame boundary
		return 0
	case d < 0:
		if int(-d) >= len(b) {
			return 0 // all walked already
		}
		b = b[-d:]
	}
	w.next += uint32(len(b))
	k := 0
	for len(b) > 0 {
		if w.preface > 0 {
			n := min(w.preface, len(b))
			off := len(h2Preface) - w.preface
			if string(b[:n]) != h2Preface[off:off+n] {
				w.lose()
				return k
			}
			w.preface -= n
			b = b[n:]
			continue
		}
		switch w.state {
		case h2sHeader:
			n := min(h2FrameHeaderLen-int(w.hn), len(b))
			copy(w.hdr[w.hn:], b[:n])
			w.hn += uint8(n)
			b = b[n:]
			if int(w.hn) < h2FrameHeaderLen {
				continue
			}
			w.hn = 0
			if !w.frame(out, &k) {
				return k
			}
		case h2sPadLen:
			w.pad = int(b[0])
			b = b[1:]
			w.remain--
			if w.pad > w.remain {
				w.lose()
				return k
			}
			w.toBlock(out, &k)
		case h2sPrio:
			n := min(w.prio, len(b))
			w.prio -= n
			w.remain -= n
			b = b[n:]
			if w.prio == 0 {
				w.toBlock(out, &k)
			}
		case h2sBlock:
			n := min(w.want, len(b))
			w.ev.BlockLen += uint8(copy(w.ev.Block[w.ev.BlockLen:], b[:n]))
			w.want -= n
			w.remain -= n
			b = b[n:]
			if w.want == 0 {
				w.emit(out, &k)
				w.skipRest()
			}
		case h2sSkip:
			n := min(w.remain, len(b))
			w.remain -= n
			b = b[n:]
			if w.remain == 0 {
				w.state = h2sHeader
			}
		}
	}
	return k
}

// frame starts the frame whose header was just read; false if the
// header loses sync.
func (w *H2Walker) frame(out []H2Event, k *int) bool {
	h := w.hdr[:]
	n := int(h[h2LengthOffset])<<16 | int(h[h2LengthOffset+1])<<8 | int(h[h2LengthOffset+2])
	typ, flags := h[h2TypeOffset], h[h2FlagsOffset]
	stream := binary.BigEndian.Uint32(h[h2StreamOffset:]) & 0x7fffffff
	if n > h2MaxWalkedFrame || typ == h2Headers && stream == 0 {
		w.lose()
		return false
	}
	w.remain, w.pad = n, 0
	switch typ {
	case h2Headers:
		w.ev = H2Event{Stream: stream, Kind: H2EventHeaders, Flags: flags}
		w.prio = 0
		if flags&h2FlagPriority != 0 {
			w.prio = h2PriorityLen
			if n < w.prio {
				w.lose() // shorter than its own priority fields
				return false
			}
		}
		switch {
		case flags&h2FlagPadded != 0 && n > 0:
			w.state = h2sPadLen
		case w.prio > 0:
			w.state = h2sPrio
		default:
			w.toBlock(out, k)
		}
	case h2RSTStream:
		if stream != 0 {
			w.ev = H2Event{Stream: stream, Kind: H2EventReset, Flags: flags}
			w.emit(out, k)
		}
		w.skipRest()
	default:
		w.skipRest()
	}
	return true
}

// toBlock moves on to the header block, after the padding length and the
// priority fields.
func (w *H2Walker) toBlock(out []H2Event, k *int) {
	if w.prio > 0 {
		if w.prio > w.remain {
			w.lose()
			return
		}
		w.state = h2sPrio
		return
	}
	w.want = min(H2BlockLen, w.remain-w.pad)
	if w.want <= 0 {
		w.want = 0
		w.emit(out, k)
		w.skipRest()
		return
	}
	w.state = h2sBlock
}

func (w *H2Walker) skipRest() {
	w.state = h2sSkip
	if w.remain == 0 {
		w.state = h2sHeader
	}
}

func (w *H2Walker) emit(out []H2Event, k *int) {
	if *k >= len(out) {
		w.dropped++
		return
	}
	out[*k] = w.ev
	*k++
}

func (w *H2Walker) lose() {
	if !w.lost {
		w.losses++
	}
	w.lost = true
}

// H2 status codes that are not a status: a HEADERS frame whose :status
// is out of reach (a dynamic table reference, or cut), and a stream reset.
const (
	H2StatusUnknown uint16 = 0
	H2StatusReset   uint16 = 1
)

// H2Status returns the :status a response's header block begins with:
// 100..599, or H2StatusUnknown when it cannot tell from these bytes (a
// dynamic table reference, a Huffman code it does not know, the block
// cut). It never allocates: the static table's statuses (0x88..0x8e),
// and literals of three digits, plain or Huffman-coded.
func H2Status(block []byte) uint16 {
	b := block
	for len(b) > 0 && b[0]&0xe0 == 0x20 { // dynamic table size updates
		_, rest, err := hpackInt(b, 5)
		if err != nil {
			return H2StatusUnknown
		}
		b = rest
	}
	if len(b) == 0 {
		return H2StatusUnknown
	}
	c := b[0]
	if c&0x80 != 0 {
		idx := c & 0x7f
		if idx >= 8 && idx <= 14 {
			return h2StaticStatus[idx-8]
		}
		return H2StatusUnknown
	}
	// A literal whose name is the static :status (index 8..14): with
	// incremental indexing (01), without (0000) or never indexed (0001).
	var idx byte
	switch {
	case c&0xc0 == 0x40:
		idx = c & 0x3f
	case c&0xe0 == 0 || c&0xf0 == 0x10:
		idx = c & 0x0f
	}
	if idx < 8 || idx > 14 || len(b) < 2 {
		return H2StatusUnknown
	}
	n, v := int(b[1]&0x7f), b[2:]
	if len(v) < n {
		return H2StatusUnknown
	}
	v = v[:n]
	if b[1]&0x80 != 0 {
		return huffmanStatus(v)
	}
	return digits3(v)
}

var h2StaticStatus = [...]uint16{200, 204, 206, 304, 400, 404, 500}

func digits3(v []byte) uint16 {
	if len(v) != 3 {
		return H2StatusUnknown
	}
	code := uint16(0)
	for _, c := range v {
		if c < '0' || c > '9' {
			return H2StatusUnknown
		}
		code = code*10 + uint16(c-'0')
	}
	if code < 100 || code > 599 {
		return H2StatusUnknown
	}
	return code
}

// huffmanStatus decodes three Huffman-coded digits (RFC 7541 Appendix
// B: '0'..'2' are 5 bits, '3'..'9' 6 bits), padded with ones.
func huffmanStatus(v []byte) uint16 {
	if len(v) > 3 {
		return H2StatusUnknown // three digits take 15 to 18 bits
	}
	var acc uint32
	bits := 0
	for _, c := range v {
		acc = acc<<8 | uint32(c)
		bits += 8
	}
	var d [3]byte
	for i := range d {
		if bits < 5 {
			return H2StatusUnknown
		}
		top5 := (acc >> (bits - 5)) & 0x1f
		switch {
		case top5 <= 2:
			d[i] = '0' + byte(top5)
			bits -= 5
		case bits >= 6 && (acc>>(bits-6))&0x3f >= 0x19 && (acc>>(bits-6))&0x3f <= 0x1f:
			d[i] = '3' + byte((acc>>(bits-6))&0x3f-0x19)
			bits -= 6
		default:
			return H2StatusUnknown
		}
	}
	if bits >= 8 || acc&(1<<bits-1) != 1<<bits-1 {
		return H2StatusUnknown // padding must be ones, shorter than a byte
	}
	return digits3(d[:])
}

// H2StatusFrame writes into dst a HEADERS frame on stream holding only
// :status (or a RST_STREAM frame for H2StatusReset), as the classifiers
// read it, and returns its bytes: how the datapath fills a Pair's head
// from a status it walked or was relayed. H2StatusUnknown gives a
// HEADERS frame whose :status is a dynamic table reference: "answered".
func H2StatusFrame(dst *[16]byte, stream uint32, status uint16) []byte {
	put := func(n int, typ, flags byte) {
		dst[0], dst[1], dst[2] = 0, 0, byte(n)
		dst[3], dst[4] = typ, flags
		binary.BigEndian.PutUint32(dst[5:], stream&0x7fffffff)
	}
	switch status {
	case H2StatusReset:
		put(4, h2RSTStream, 0)
		binary.BigEndian.PutUint32(dst[9:], 0x2) // INTERNAL_ERROR: the code is not relayed
		return dst[:13]
	case H2StatusUnknown:
		put(1, h2Headers, 0x4)
		dst[9] = 0x80 | byte(hpackStaticLen+1) // the dynamic table's first entry
		return dst[:10]
	}
	for i, s := range h2StaticStatus {
		if s == status {
			put(1, h2Headers, 0x4)
			dst[9] = 0x88 + byte(i)
			return dst[:10]
		}
	}
	put(5, h2Headers, 0x4)
	dst[9], dst[10] = 0x48, 3 // literal, incremental indexing, name :status; 3 plain bytes
	dst[11], dst[12], dst[13] = byte('0'+status/100%10), byte('0'+status/10%10), byte('0'+status%10)
	return dst[:14]
}

// AppendH2Request appends to dst a HEADERS frame of e's stream holding
// e's kept header block: a request as the summaries and ClassifyPair read
// it, for a Pair's request head.
func AppendH2Request(dst []byte, e *H2Event) []byte {
	blk := e.HeaderBlock()
	var h [h2FrameHeaderLen]byte
	h[2], h[3], h[4] = byte(len(blk)), h2Headers, 0x4
	binary.BigEndian.PutUint32(h[h2StreamOffset:], e.Stream&0x7fffffff)
	return append(append(dst, h[:]...), blk...)
}
