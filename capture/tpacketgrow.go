package capture

import (
	"fmt"
	"hash/maphash"
	"math/bits"
	"runtime"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// A ring starts at Config.InitialBufferSize, so an idle daemon holds
// little, and grows toward Config.BufferSize to keep Config.Hold's worth
// of the rate the reader measures (bytes the kernel handed over per
// sizingWindow): a reader held up for Hold then loses nothing. It also
// grows when the kernel dropped packets, or cut one to fit a small ring's
// blocks.
//
// A ring cannot be resized in place, so growing opens a second socket
// with the bigger ring, on a goroutine (allocating and mapping it takes
// milliseconds); the reader then binds it, makes the old socket's filter
// drop everything, reads the old ring until it is empty for good, and
// carries on in the new one. A packet that arrived between the bind and
// the cut is in both rings: the reader remembers what it read from the
// old ring after the bind and skips those packets in the new one.
type grower struct {
	max     int           // Config.BufferSize
	hold    time.Duration // Config.Hold
	retire  time.Duration // the kernel's block timeout
	since   time.Time     // the reader's rate window
	bytes   int
	cutSeen bool // the kernel cut a packet to fit a block in this window

	growing atomic.Bool              // a bigger ring is on its way, until the switch ends
	pending atomic.Pointer[ringSock] // prepared and not yet bound: the reader's to take
	retryAt atomic.Int64             // after a failed growth, not before (unix ns)
	size    atomic.Int64             // bytes of the ring read
	grown   atomic.Uint64            // switches to a bigger ring
	failed  atomic.Uint64            // growths the kernel refused (memory)
	cut     atomic.Uint64            // packets cut to fit a block
	dups    atomic.Uint64            // packets in both rings, skipped in the new one

	// The switch, the reader's (next also under the source's mu).
	next    *ringSock // bound, filling; read once the old ring is drained
	boundAt time.Time
	cutAt   time.Time
	drained time.Time // the old ring, once not ready after this, is empty for good
	dedupe  bool      // the new ring's first packets may be duplicates
	seen    [switchSeen]uint64
	nseen   int
}

const (
	// sizingWindow is how often the reader looks at the rate it reads.
	sizingWindow = 20 * time.Millisecond
	// growRetry is how long a growth the kernel refused is not retried.
	growRetry = 10 * time.Second
	// switchSeen bounds the packets remembered across a switch: those of
	// the microseconds between the new ring's bind and the old one's cut.
	switchSeen = 1024
	// seenPrefix is how much of a packet identifies it across rings:
	// its headers and the start of its payload.
	seenPrefix = 128
)

var seenSeed = maphash.MakeSeed()

func (g *grower) init(cfg Config) {
	g.max, g.hold, g.retire = cfg.BufferSize, cfg.Hold, retireTimeout(cfg)
	g.since = time.Now()
}

// switching reports whether Read must look at packets for the switch.
func (g *grower) switching() bool { return g.next != nil || g.dedupe }

// draining reports whether the ring read is an old one being emptied.
func (g *grower) draining() bool { return g.next != nil }

// duplicate remembers a packet read from the old ring after the new one
// was bound, and reports whether a packet of the new ring is one of
// those.
func (g *grower) duplicate(data []byte, ts time.Time) bool {
	if g.next != nil {
		// Stamped a millisecond early at most: kernel and Go clocks agree.
		if !ts.Before(g.boundAt.Add(-time.Millisecond)) && g.nseen < len(g.seen) {
			g.seen[g.nseen] = seenHash(data)
			g.nseen++
		}
		return false
	}
	if ts.After(g.cutAt.Add(time.Millisecond)) {
		g.dedupe, g.nseen = false, 0
		return false
	}
	h := seenHash(data)
	for _, s := range g.seen[:g.nseen] {
		if s == h {
			g.dups.Add(1)
			return true
		}
	}
	return false
}

func seenHash(data []byte) uint64 { return maphash.Bytes(seenSeed, data[:min(len(data), seenPrefix)]) }

// checkCut notes a packet the kernel cut shorter than its filter asked,
// to fit the ring's blocks.
func (s *tpacketSource) checkCut(snap, wireLen int, pt byte) {
	want := s.cfg.SnapLen
	if pt == packetOutgoing && s.cfg.Outbound.Filter != "" {
		want = s.cfg.Outbound.SnapLen
	}
	if snap < min(wireLen, want) {
		s.grow.cut.Add(1)
		s.grow.cutSeen = true
	}
}

// account adds a block of n bytes to the rate window and, at the end of
// a window, starts a bigger ring if this one holds less than Hold of the
// rate, or lost or cut packets. A ring at its largest (a fixed one, the
// default) costs nothing here: no clock, no look at the kernel's counters.
func (s *tpacketSource) account(n int) {
	g := &s.grow
	if s.r.size() >= g.max {
		return
	}
	g.bytes += n
	now := time.Now()
	elapsed := now.Sub(g.since)
	if elapsed < sizingWindow {
		return
	}
	want := int(float64(g.bytes) / elapsed.Seconds() * g.hold.Seconds())
	g.bytes, g.since = 0, now
	s.mu.Lock()
	dropsBefore := s.kernDrp
	s.sumKernelLocked()
	dropped := s.kernDrp > dropsBefore
	s.mu.Unlock()
	size := s.r.size()
	if dropped || g.cutSeen {
		want = max(want, 4*size)
	}
	g.cutSeen = false
	if want <= size || g.growing.Load() || now.UnixNano() < g.retryAt.Load() {
		return
	}
	g.growing.Store(true)
	go s.prepare(min(g.max, max(2*size, 1<<bits.Len(uint(want-1)))))
}

// prepare opens a ring of size bytes for the reader to switch to.
func (s *tpacketSource) prepare(size int) {
	g := &s.grow
	r, err := s.openInNamespace(size)
	if err != nil {
		g.failed.Add(1)
		g.retryAt.Store(time.Now().Add(growRetry).UnixNano())
		g.growing.Store(false)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.released {
		r.release()
		return
	}
	g.pending.Store(r)
	_ = s.r.poll.SetReadDeadline(time.Unix(1, 0)) // wake a waiting reader
}

// openInNamespace opens a ring in the network namespace the source was
// opened in. A daemon runs in one namespace; a caller that opened the
// source from a thread of another (tests, tools entering a namespace)
// had it on that thread only, so this goroutine's thread joins it, and
// dies with the goroutine rather than go back to the runtime's pool in
// a foreign namespace.
func (s *tpacketSource) openInNamespace(size int) (*ringSock, error) {
	runtime.LockOSThread()
	here, err := netnsInode()
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	if here == s.netns {
		defer runtime.UnlockOSThread()
	} else if err := unix.Setns(s.netnsFD, unix.CLONE_NEWNET); err != nil {
		return nil, fmt.Errorf("join network namespace: %w", err) // the thread stays locked: it ends with the goroutine
	}
	return openRing(s.cfg, s.ifindex, s.prog, size)
}

// beginSwitch binds next and cuts the ring read off, to be read until
// empty.
func (s *tpacketSource) beginSwitch(next *ringSock) {
	g := &s.grow
	g.boundAt = time.Now()
	if err := next.bind(s.ifindex); err != nil {
		next.release()
		g.failed.Add(1)
		g.retryAt.Store(time.Now().Add(growRetry).UnixNano())
		g.growing.Store(false)
		return
	}
	if err := attachFilter(s.r.fd, dropAll); err != nil {
		// Both rings keep taking everything: finish at once rather
		// than read the same packets twice for longer.
		g.drained = time.Time{}
	} else {
		g.drained = time.Now().Add(2*g.retire + time.Millisecond)
	}
	g.cutAt = time.Now()
	g.nseen, g.dedupe = 0, false
	s.mu.Lock()
	g.next = next
	s.mu.Unlock()
}

// finishSwitch releases the drained ring and reads the new one.
func (s *tpacketSource) finishSwitch() {
	g := &s.grow
	s.mu.Lock()
	recv, drops := s.r.kernelStats()
	s.kernRecv += recv
	s.kernDrp += drops
	s.r.release()
	s.r, g.next = g.next, nil
	s.mu.Unlock()
	s.cur, s.held, s.left = 0, false, 0
	g.dedupe = g.nseen > 0
	g.size.Store(int64(s.r.size()))
	g.grown.Add(1)
	g.growing.Store(false)
}

// netnsInode identifies the calling thread's network namespace.
func netnsInode() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0, fmt.Errorf("network namespace: %w", err)
	}
	return st.Ino, nil
}

// openNetns opens the calling thread's network namespace, to open more
// rings in later from any thread.
func openNetns() (fd int, ino uint64, err error) {
	fd, err = unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, 0, fmt.Errorf("network namespace: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("network namespace: %w", err)
	}
	return fd, st.Ino, nil
}
