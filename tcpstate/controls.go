package tcpstate

import (
	"fmt"
	"math"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/tcpshadow/tcpshadow/rewrite"
)

// The load-test controls (scenarios 43-47): which client connections are
// copied (Sample, rising over Ramp), how many times each reaches the
// shadow (Multiply), and how many new shadow sessions start a second
// (MaxNewSessions). They change while the engine runs (SetControls); a
// connection's fate is decided once, when it opens, so that it is copied
// whole or not at all whatever changes later.

// Controls are the engine's load-test controls.
type Controls struct {
	// Sample is the share of client connections copied, in (0, 1]; 0
	// takes DefaultControls' (all). A connection is chosen by a seeded
	// hash of its client address and port, so every engine with the same
	// SampleSeed chooses the same connections.
	Sample     float64
	SampleSeed uint64 // fixed at start: SetControls keeps the engine's
	// Multiply is how many times each copied connection reaches the
	// shadow, each copy from a forged tuple of its own: 1..MaxMultiply;
	// 0 takes the default, 1.
	Multiply int
	// Ramp, when positive, moves the copied share linearly to Sample
	// over Ramp: from 0 when the engine starts, from the share in effect
	// when SetControls changes Sample.
	Ramp time.Duration
	// MaxNewSessions caps the shadow sessions started a second, over all
	// workers, each copy counting as one; 0: no cap. Sessions beyond it
	// are skipped, not delayed: a connection skipped at its SYN is not
	// copied.
	MaxNewSessions float64
}

// MaxMultiply bounds Controls.Multiply: the copy index is a byte of the
// session key.
const MaxMultiply = 255

// DefaultControls returns the controls' defaults: every connection, once,
// at once, uncapped.
func DefaultControls() Controls { return Controls{Sample: 1, Multiply: 1} }

func (c *Controls) defaults() {
	d := DefaultControls()
	orDefault(&c.Sample, d.Sample)
	orDefault(&c.Multiply, d.Multiply)
}

// Validate checks defaulted controls; errors are *FieldError naming the
// field under "Controls.".
func (c *Controls) Validate() error {
	switch {
	case math.IsNaN(c.Sample) || c.Sample <= 0 || c.Sample > 1:
		return fieldErr("Controls.Sample", c.Sample, "want a share above 0 and at most 1 (100%)")
	case c.Multiply < 1 || c.Multiply > MaxMultiply:
		return fieldErr("Controls.Multiply", c.Multiply, fmt.Sprintf("want 1..%d", MaxMultiply))
	case c.Ramp < 0:
		return fieldErr("Controls.Ramp", c.Ramp, "must not be negative")
	case math.IsNaN(c.MaxNewSessions) || c.MaxNewSessions < 0 || math.IsInf(c.MaxNewSessions, 0):
		return fieldErr("Controls.MaxNewSessions", c.MaxNewSessions, "want a rate of at least 0 (0: no cap)")
	}
	return nil
}

// live is the controls in effect and what the engine keeps of their
// history, immutable once published (shared.live); SetControls publishes
// a new one.
type live struct {
	c    Controls
	from float64 // the share when c took effect, where its ramp starts
	at   int64   // the engine's clock then
	// floor is the lowest share in effect since the engine started: a
	// connection first seen mid-stream may have opened at any time
	// since, so it is joined only if every share would have chosen it.
	floor float64
	// hiThr is the threshold of the highest share in effect since the
	// start: a connection above it was never chosen, so the Input drops
	// its packets before they cost a copy.
	hiThr uint64
	// fanout is the most copies in effect since the start: a lower
	// Multiply keeps feeding the copies already open. minCopies is the
	// fewest: only copies below it are joined mid-stream.
	fanout, minCopies int
	perWorker         float64 // MaxNewSessions / workers
}

// newLive returns the controls at the engine's start (clock 0).
func newLive(c Controls, workers int) *live {
	l := &live{c: c, from: c.Sample, floor: c.Sample, fanout: c.Multiply, minCopies: c.Multiply}
	if c.Ramp > 0 {
		l.from, l.floor = 0, 0
	}
	l.hiThr = shareThreshold(c.Sample)
	l.perWorker = c.MaxNewSessions / float64(max(workers, 1))
	return l
}

// next returns the state after c takes effect at now.
func (l *live) next(c Controls, workers int, now int64) *live {
	c.SampleSeed = l.c.SampleSeed
	n := *l
	n.c = c
	if c.Sample != l.c.Sample || c.Ramp != l.c.Ramp {
		n.from, n.at = l.share(now), now
		if c.Ramp == 0 {
			n.from = c.Sample
		}
	}
	// The share moves linearly from n.from to c.Sample: its lowest and
	// highest are at the ends.
	n.floor = min(l.floor, n.from, c.Sample)
	n.hiThr = max(l.hiThr, shareThreshold(c.Sample))
	n.fanout, n.minCopies = max(l.fanout, c.Multiply), min(l.minCopies, c.Multiply)
	n.perWorker = c.MaxNewSessions / float64(max(workers, 1))
	return &n
}

// share is the copied share at now: Sample, or on its ramp.
func (l *live) share(now int64) float64 {
	if l.c.Ramp <= 0 || now >= l.at+int64(l.c.Ramp) {
		return l.c.Sample
	}
	f := float64(max(now-l.at, 0)) / float64(l.c.Ramp)
	return l.from + (l.c.Sample-l.from)*f
}

// shareThreshold turns a share into a bound on a 64-bit hash: a hash
// below it is chosen. 1 chooses every hash.
func shareThreshold(share float64) uint64 {
	if share >= 1 {
		return math.MaxUint64
	}
	return uint64(share * (1 << 63) * 2)
}

// chosen reports whether a connection of hash h is within share.
func chosen(h uint64, share float64) bool {
	t := shareThreshold(share)
	return t == math.MaxUint64 || h < t
}

// sampleSalt keeps the sample's hash apart from the flow hashes that
// pick workers and targets, so a sample is not a set of workers.
const sampleSalt = 0x53a3b1e5c0ffee01

// sampleHash is the hash --sample decides a connection by: its client
// address and port and the seed, nothing of this host's.
func sampleHash(addr [16]byte, port uint16, seed uint64) uint64 {
	return rewrite.HashAddrPort(addr, port, seed^sampleSalt)
}

// SetControls changes the controls while the engine runs; c.SampleSeed
// is ignored (the engine's stays, or sessions chosen under the old one
// would lose their packets). Sessions already open are not affected:
// the controls decide what opens from now on.
func (e *Engine) SetControls(c Controls) error {
	c.defaults()
	if err := c.Validate(); err != nil {
		return err
	}
	e.liveMu.Lock()
	defer e.liveMu.Unlock()
	e.sh.live.Store(e.sh.live.Load().next(c, len(e.loops), e.now()))
	return nil
}

// ControlsNow returns the controls in effect and the copied share now,
// on its ramp.
func (e *Engine) ControlsNow() (Controls, float64) {
	l := e.sh.live.Load()
	return l.c, l.share(e.now())
}

// liveOf returns the published controls, publishing cfg's first (tests
// build workers without an engine).
func (sh *shared) liveOf(cfg *Config, workers int) *live {
	if l := sh.live.Load(); l != nil {
		return l
	}
	sh.live.CompareAndSwap(nil, newLive(cfg.Controls, workers))
	return sh.live.Load()
}

// liveState is the shared holder; an atomic pointer, read per admission
// and per captured packet.
type liveState = atomic.Pointer[live]

// SampleRank is where the connection of client addr:port stands in
// --sample's order, in [0, 1): a share above it copies the connection.
// Tests and tools use it to tell which connections a share copies.
func SampleRank(addr netip.Addr, port uint16, seed uint64) float64 {
	return float64(sampleHash(addr.Unmap().As16(), port, seed)>>11) / (1 << 53)
}
