package tunnelsock

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/tcpshadow/tcpshadow/intercept/tunnel"
)

// ErrNoAck is Ping's error when no answer came: the datagrams, or the
// answers, were dropped on the way, or nothing received them.
var ErrNoAck = errors.New("no answer to the tunnel's probe")

// pingTries is how many probes Ping sends within its wait.
const pingTries = 4

// Ping sends probes to the agent's tunnel port at dst, sealed with seal,
// and waits up to wait for an answer opened by open that carries the
// probe's token (tcpshadow doctor): nil means the port is open both ways
// and the agent holds this session's keys. Errors: ErrNoAck, or one that
// says the host refused the port (an ICMP port unreachable).
func Ping(ctx context.Context, dst netip.AddrPort, seal *tunnel.Sealer, open *tunnel.Opener, wait time.Duration) error {
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
	if err != nil {
		return fmt.Errorf("tunnel probe to %v: %w", dst, err)
	}
	defer conn.Close()
	var token [16]byte
	_, _ = rand.Read(token[:])
	probe := seal.Seal(make([]byte, len(token)+tunnel.Overhead), tunnel.TypeProbe, token[:])
	deadline := time.Now().Add(wait)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	buf := make([]byte, 256)
	for try := range pingTries {
		if _, err := conn.Write(probe); err != nil {
			return fmt.Errorf("tunnel probe to %v: %w", dst, err)
		}
		// The same datagram again would be a replay: each try a new one.
		probe = seal.Seal(make([]byte, len(token)+tunnel.Overhead), tunnel.TypeProbe, token[:])
		next := time.Now().Add(wait / pingTries)
		if try == pingTries-1 || next.After(deadline) {
			next = deadline
		}
		_ = conn.SetReadDeadline(next)
		for {
			n, err := conn.Read(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				return fmt.Errorf("tunnel probe to %v: %w", dst, err)
			}
			h, v := tunnel.Parse(buf[:n])
			if v != tunnel.OK || h.Type() != tunnel.TypeProbeAck || h.Session() != open.Session() {
				continue
			}
			if got, v := open.Open(buf[:n]); v == tunnel.OK && string(got) == string(token[:]) {
				return nil
			}
		}
		if !time.Now().Before(deadline) || ctx.Err() != nil {
			break
		}
	}
	return ErrNoAck
}
