package compare

import (
	"math"
	"sort"
)

// latencyBounds are the upper bounds, in seconds, of a latency
// histogram's buckets: ten per decade (1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6,
// 8 times a power of ten) from 10µs to 100s, so a quantile read from them
// is off by at most a quarter. Beyond the last is the overflow bucket.
var latencyBounds = func() []float64 {
	mantissas := []float64{1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8}
	var b []float64
	for e := -5; e <= 1; e++ {
		for _, m := range mantissas {
			b = append(b, m*math.Pow10(e))
		}
	}
	return append(b, 100)
}()

// promBound reports whether a fine bound is also a bucket of the
// Prometheus histogram (1, 2.5 and 5 per decade): fewer series per map.
func promBound(v float64) bool {
	m := v / math.Pow10(int(math.Floor(math.Log10(v)+1e-9)))
	return math.Abs(m-1) < 1e-6 || math.Abs(m-2.5) < 1e-6 || math.Abs(m-5) < 1e-6
}

// histogram counts latencies in the fixed buckets of latencyBounds: a
// bounded sketch that quantiles are read from.
type histogram struct {
	counts [numLatencyBuckets]uint64 // by bucket; the last is the overflow
	count  uint64
	sum    float64 // seconds
	min    float64 // of the observations: bounds the first bucket's interpolation
	max    float64
}

// numLatencyBuckets is len(latencyBounds)+1 (the overflow), a constant for the array.
const numLatencyBuckets = 72

func init() {
	if len(latencyBounds)+1 != numLatencyBuckets {
		panic("compare: latencyBounds and numLatencyBuckets disagree")
	}
}

func (h *histogram) observe(seconds float64) {
	if seconds < 0 || math.IsNaN(seconds) {
		seconds = 0
	}
	i := sort.SearchFloat64s(latencyBounds, seconds)
	h.counts[i]++
	if h.count == 0 || seconds < h.min {
		h.min = seconds
	}
	h.count++
	h.sum += seconds
	h.max = max(h.max, seconds)
}

// quantile returns the q-quantile (0 < q ≤ 1) in seconds, interpolated
// linearly within its bucket; 0 for no observations.
func (h *histogram) quantile(q float64) float64 {
	if h.count == 0 {
		return 0
	}
	rank := q * float64(h.count)
	var seen float64
	for i, c := range h.counts {
		if c == 0 {
			continue
		}
		if seen+float64(c) >= rank {
			lo := 0.0
			if i > 0 {
				lo = latencyBounds[i-1]
			}
			hi := h.max
			if i < len(latencyBounds) {
				hi = min(latencyBounds[i], h.max)
			}
			lo = min(max(lo, h.min), hi)
			return lo + (hi-lo)*(rank-seen)/float64(c)
		}
		seen += float64(c)
	}
	return h.max
}

// promBuckets returns the cumulative counts by upper bound of the
// Prometheus histogram.
func (h *histogram) promBuckets() map[float64]uint64 {
	out := make(map[float64]uint64, 24)
	var cum uint64
	for i, b := range latencyBounds {
		cum += h.counts[i]
		if promBound(b) {
			out[b] = cum
		}
	}
	return out
}
