//go:build race

package tcpstate

// raceEnabled: the race detector pads allocations, so heap measurements
// do not hold under it.
const raceEnabled = true
