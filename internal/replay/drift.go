package replay

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// Drift is a histogram of lateness: how long after its scheduled time
// each packet was handed over. Buckets are logarithmic, four per power of
// two of microseconds (at most 19% apart), from under a microsecond to
// over an hour; one writer, any number of readers, no allocation.
type Drift struct {
	buckets [driftBuckets]atomic.Uint64
	n       atomic.Uint64
	max     atomic.Int64 // ns
}

const (
	driftSub     = 4 // buckets per power of two
	driftPowers  = 32
	driftBuckets = driftPowers*driftSub + 1
)

// bucket returns the bucket of a lateness of us microseconds.
func bucket(us uint64) int {
	if us == 0 {
		return 0
	}
	p := bits.Len64(us) - 1 // 2^p <= us < 2^(p+1)
	sub := 0
	if p >= 2 {
		sub = int((us >> (p - 2)) & (driftSub - 1))
	} else {
		sub = int(us<<(2-p)) & (driftSub - 1)
	}
	return min(1+p*driftSub+sub, driftBuckets-1)
}

// upper returns the largest lateness, in microseconds, bucket b holds.
func upper(b int) float64 {
	if b == 0 {
		return 0
	}
	p, sub := (b-1)/driftSub, (b-1)%driftSub
	return float64(uint64(1)<<p) * (1 + float64(sub+1)/driftSub)
}

// Observe records one lateness; an early hand-over counts as on time.
func (d *Drift) Observe(late time.Duration) {
	late = max(late, 0)
	d.buckets[bucket(uint64(late/time.Microsecond))].Add(1)
	d.n.Add(1)
	if int64(late) > d.max.Load() {
		d.max.Store(int64(late))
	}
}

// Count returns how many were observed.
func (d *Drift) Count() uint64 { return d.n.Load() }

// Max returns the largest lateness observed.
func (d *Drift) Max() time.Duration { return time.Duration(d.max.Load()) }

// Quantile returns the lateness q (0..1) of the observations were no
// later than, to the bucket's upper bound (never more than Max).
func (d *Drift) Quantile(q float64) time.Duration {
	n := d.n.Load()
	if n == 0 {
		return 0
	}
	rank := uint64(q*float64(n) + 0.5)
	rank = min(max(rank, 1), n)
	var seen uint64
	for b := range d.buckets {
		seen += d.buckets[b].Load()
		if seen >= rank {
			return min(time.Duration(upper(b)*float64(time.Microsecond)), d.Max())
		}
	}
	return d.Max()
}
