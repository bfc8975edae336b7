package capture

import (
	"sync"
	"sync/atomic"
)

// holder orders a source's release after its reader is done with what it
// returned. The reader is busy from the start of Read until Read fails,
// or, on success, until the next Read: the packet returned points into
// the source's memory (a ring, libpcap's buffer). Close releases the
// source only if the reader is not busy, and otherwise leaves that to the
// reader, so nothing is freed, and no descriptor the poller waits on is
// closed, under a busy reader.
type holder struct {
	closed atomic.Bool

	// mu guards busy and released, and is held around free; sources use
	// it for what else must not run beside their release.
	mu             sync.Mutex
	busy, released bool
	free           func() // frees what the source holds; called once, under mu
}

// begin starts a Read; false, the source released, once it is closed.
func (h *holder) begin() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed.Load() {
		h.busy = false
		h.releaseLocked()
		return false
	}
	h.busy = true
	return true
}

// fail ends a Read that failed, releasing the source if Close came
// meanwhile; it reports whether it had.
func (h *holder) fail() (closed bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.busy = false
	if closed = h.closed.Load(); closed {
		h.releaseLocked()
	}
	return closed
}

// close marks the source closed, calls wake (under mu, before the
// release: it makes a waiting reader return), and releases the source
// unless the reader is busy. A second close does nothing.
func (h *holder) close(wake func()) {
	if !h.closed.CompareAndSwap(false, true) {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if wake != nil && !h.released {
		wake()
	}
	if !h.busy {
		h.releaseLocked()
	}
}

func (h *holder) releaseLocked() {
	if h.released {
		return
	}
	h.released = true
	h.free()
}
