package record

import (
	"encoding/binary"
	"sync/atomic"
)

// tap is one capture goroutine's queue to the recorder's writer: a
// single-producer, single-consumer ring of records in a fixed byte
// arena. Put never blocks and never allocates: a packet that does not
// fit is dropped and counted. Each record is a header (length, time) and
// the bytes, 8-aligned, and never wraps: one that would is preceded by a
// skip marker and written at the arena's start.
type tap struct {
	buf  []byte // len a power of two
	mask uint64
	// tail is written by the producer, head by the consumer; both only
	// grow, and their difference is what the ring holds.
	tail    atomic.Uint64
	head    atomic.Uint64
	dropped atomic.Uint64
	_       [64]byte // keep taps' counters apart
}

// Record header layout in the arena.
const (
	tapLenOff   = 0 // uint32: the packet's length, or tapSkip
	tapOrigOff  = 4 // uint32: its length on the wire
	tapTimeOff  = 8 // int64: capture time, ns since the epoch
	tapHeader   = 16
	tapAlign    = 8
	tapSkip     = ^uint32(0)
	minTapBytes = 64 << 10
)

func newTap(size int) *tap {
	n := minTapBytes
	for n < size {
		n <<= 1
	}
	return &tap{buf: make([]byte, n), mask: uint64(n - 1)}
}

func recLen(n int) uint64 { return uint64(tapHeader+n+tapAlign-1) &^ (tapAlign - 1) }

// put queues a copy of pkt; it reports false, counting a drop, when the
// ring has no room.
func (t *tap) put(ts int64, pkt []byte, origLen int) bool {
	size := uint64(len(t.buf))
	need := recLen(len(pkt))
	tail, head := t.tail.Load(), t.head.Load()
	pos := tail & t.mask
	skip := uint64(0)
	if pos+need > size {
		skip = size - pos // the rest of the arena, then from its start
	}
	if need > size/2 || size-(tail-head) < skip+need {
		t.dropped.Add(1)
		return false
	}
	le := binary.LittleEndian
	if skip > 0 {
		le.PutUint32(t.buf[pos+tapLenOff:], tapSkip)
		tail += skip
		pos = 0
	}
	r := t.buf[pos : pos+need]
	le.PutUint32(r[tapLenOff:], uint32(len(pkt)))
	le.PutUint32(r[tapOrigOff:], uint32(max(origLen, len(pkt))))
	le.PutUint64(r[tapTimeOff:], uint64(ts))
	copy(r[tapHeader:], pkt)
	t.tail.Store(tail + need) // publishes the record
	return true
}

// peek returns the oldest record without taking it; ok is false when
// the ring is empty.
func (t *tap) peek() (ts int64, pkt []byte, origLen int, ok bool) {
	le := binary.LittleEndian
	for {
		head, tail := t.head.Load(), t.tail.Load()
		if head == tail {
			return 0, nil, 0, false
		}
		pos := head & t.mask
		n := le.Uint32(t.buf[pos+tapLenOff:])
		if n == tapSkip {
			t.head.Store(head + uint64(len(t.buf)) - pos)
			continue
		}
		r := t.buf[pos:]
		return int64(le.Uint64(r[tapTimeOff:])), r[tapHeader : tapHeader+int(n)], int(le.Uint32(r[tapOrigOff:])), true
	}
}

// take releases the record peek returned.
func (t *tap) take() {
	head := t.head.Load()
	n := binary.LittleEndian.Uint32(t.buf[head&t.mask+tapLenOff:])
	t.head.Store(head + recLen(int(n)))
}
