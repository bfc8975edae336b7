package tunnel

// windowWords is the window's size in 64-bit words; one of them is the
// word being filled, so WindowSize counters behind the newest are told
// apart.
const windowWords = 64

// WindowSize is how far behind the newest counter accepted a datagram
// may arrive and still be accepted once: the copy daemon's workers seal
// concurrently and the network reorders, by far less than this.
const WindowSize = (windowWords - 1) * 64

// Window is an anti-replay window (RFC 6479's bitmap): the newest counter
// accepted and a ring of bits for the WindowSize before it. Counter 0 is
// never valid. The zero Window accepts any counter from 1.
type Window struct {
	top  uint64
	bits [windowWords]uint64
}

// Fresh reports whether n could be accepted: not seen, not too old.
func (w *Window) Fresh(n uint64) bool {
	switch {
	case n == 0:
		return false
	case n > w.top:
		return true
	case w.top-n >= WindowSize:
		return false
	}
	return w.bits[(n/64)%windowWords]&(1<<(n%64)) == 0
}

// Mark records n as accepted; n must be Fresh.
func (w *Window) Mark(n uint64) {
	if n > w.top {
		// Clear the words between the old top's and n's: their bits
		// were of counters a whole ring ago.
		cur, next := w.top/64, n/64
		if next-cur >= windowWords {
			clear(w.bits[:])
		} else {
			for i := cur + 1; i <= next; i++ {
				w.bits[i%windowWords] = 0
			}
		}
		w.top = n
	}
	w.bits[(n/64)%windowWords] |= 1 << (n % 64)
}
