//go:build !race

package tcpstate

const raceEnabled = false
