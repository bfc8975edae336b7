package compare

import "sync/atomic"

// DefaultQueueLen is a Recorder's ring size when none is configured.
const DefaultQueueLen = 512

// Recorder is one worker's bounded queue of pairs to the Comparer: a
// single-producer single-consumer ring of Pair values. The producer (one
// datapath worker) calls Put; the Comparer's goroutine is the only reader.
// A nil *Recorder takes nothing, so a datapath with comparison off can
// call Put unconditionally.
type Recorder struct {
	slots []Pair // len a power of two
	mask  uint64
	// head is the next slot to read, written by the consumer only; tail
	// the next slot to write, written by the producer only. Each side
	// reads the other's with an atomic load, so a slot is published
	// (tail.Store after the copy) before the consumer reads it.
	head    atomic.Uint64
	_       [56]byte // keeps the producer's and consumer's words on separate cache lines
	tail    atomic.Uint64
	dropped atomic.Uint64 // producer only
}

func newRecorder(n int) *Recorder {
	size := 1
	for size < n {
		size <<= 1
	}
	return &Recorder{slots: make([]Pair, size), mask: uint64(size - 1)}
}

// Put copies *p into the ring. It never blocks and never allocates: when
// the ring is full it counts a drop and returns false.
func (r *Recorder) Put(p *Pair) bool {
	if r == nil {
		return false
	}
	t := r.tail.Load()
	if t-r.head.Load() > r.mask {
		r.dropped.Add(1)
		return false
	}
	r.slots[t&r.mask] = *p
	r.tail.Store(t + 1)
	return true
}

// NewRecorder returns a Recorder of n slots (rounded up to a power of
// two) for a consumer of one's own: tests, tools. A Comparer makes its own.
func NewRecorder(n int) *Recorder { return newRecorder(max(n, 1)) }

// Next copies the oldest pair into *dst and frees its slot; false when
// the ring is empty. Only the consumer calls it, and never beside a
// Comparer draining the same Recorder.
func (r *Recorder) Next(dst *Pair) bool { return r.next(dst) }

// Dropped returns how many pairs Put refused because the ring was full.
func (r *Recorder) Dropped() uint64 { return r.dropped.Load() }

// next copies the oldest pair into *dst and frees its slot; false when
// the ring is empty. Consumer only.
func (r *Recorder) next(dst *Pair) bool {
	h := r.head.Load()
	if h == r.tail.Load() {
		return false
	}
	*dst = r.slots[h&r.mask]
	r.head.Store(h + 1)
	return true
}
