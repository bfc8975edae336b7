//go:build race

package intercept

// raceEnabled: the race detector pads allocations and makes sync.Pool drop
// items at random, so allocation counts mean nothing under it.
const raceEnabled = true
