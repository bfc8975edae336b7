package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/tcpstate"
)

// This file turns what users type and the files they name into values:
// sizes, maps, addresses, TLS configurations and secrets.

// sizeUnits are the binary suffixes of sizes, largest first.
var sizeUnits = []struct {
	suffix string
	shift  uint
}{{"T", 40}, {"G", 30}, {"M", 20}, {"K", 10}}

// parseSize parses a byte count: a plain number or one with a binary
// suffix (KiB, MiB, GiB, TiB; K, M, G, T mean the same).
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range sizeUnits {
		for _, form := range []string{u.suffix + "iB", u.suffix + "B", u.suffix} {
			if strings.HasSuffix(s, form) {
				s, mult = strings.TrimSpace(strings.TrimSuffix(s, form)), 1<<u.shift
				goto parsed
			}
		}
	}
parsed:
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mult, nil
}

// formatSize writes n as parseSize reads it, in the largest binary unit
// that divides it: 1<<30 is "1GiB".
func formatSize(n int64) string {
	for _, u := range sizeUnits {
		if n >= 1<<u.shift && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.suffix + "iB"
		}
	}
	return strconv.FormatInt(n, 10)
}

// mebibytes converts a count of MiB to bytes, saturating rather than
// wrapping, so that a huge value stays out of range instead of coming
// back in.
func mebibytes(n int) int {
	if n > math.MaxInt>>20 {
		return math.MaxInt
	}
	if n < math.MinInt>>20 {
		return math.MinInt
	}
	return n << 20
}

// parseMap parses [LOCALADDR:]PORT-TARGETADDR[:PORT].
func parseMap(s string) (tcpstate.Map, error) {
	local, target, ok := strings.Cut(strings.TrimSpace(s), "-")
	if !ok {
		return tcpstate.Map{}, errors.New("want [LOCALADDR:]PORT-TARGETADDR:PORT")
	}
	var m tcpstate.Map
	if port, err := strconv.ParseUint(local, 10, 16); err == nil {
		m.Local = netip.AddrPortFrom(netip.Addr{}, uint16(port))
	} else if ap, err := netip.ParseAddrPort(local); err == nil {
		m.Local = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	} else {
		return m, fmt.Errorf("local side %q: want PORT or ADDR:PORT ([ADDR]:PORT for IPv6)", local)
	}
	if m.Local.Port() == 0 {
		return m, errors.New("local port must not be 0")
	}
	if ap, err := netip.ParseAddrPort(target); err == nil {
		m.Target = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	} else if a, err := netip.ParseAddr(strings.Trim(target, "[]")); err == nil {
		m.Target = netip.AddrPortFrom(a.Unmap(), m.Local.Port())
	} else {
		return m, fmt.Errorf("target %q: want ADDR:PORT ([ADDR]:PORT for IPv6)", target)
	}
	if m.Target.Port() == 0 {
		return m, errors.New("target port must not be 0")
	}
	if a := m.Local.Addr(); a.IsValid() && a.Is4() != m.Target.Addr().Is4() {
		return m, errors.New("local and target addresses are of different families")
	}
	return m, nil
}

// agentAddr adds the default port to HOST if it has none. A bad port is
// refused here: the client would otherwise retry it forever.
func agentAddr(s string) (string, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		// HOST, [HOST] or a bare IPv6 address.
		host, port = strings.Trim(s, "[]"), strconv.Itoa(wire.DefaultPort)
	}
	if host == "" {
		return "", errors.New("empty host")
	}
	if err := checkPort(port); err != nil {
		return "", err
	}
	return net.JoinHostPort(host, port), nil
}

// checkPort accepts a decimal port 1..65535.
func checkPort(port string) error {
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("port %q: want 1..65535", port)
	}
	return nil
}

// clientTLS builds the TLS configuration verifying the agent against the
// CA certificates in caFile; nil when caFile is empty (plain TCP).
func clientTLS(caFile, serverName, agent string) (*tls.Config, error) {
	if caFile == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate in it", caFile)
	}
	if serverName == "" {
		serverName, _, _ = net.SplitHostPort(agent)
	}
	return &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS13}, nil
}

// readSecret reads a shared secret file; empty path means no secret.
func readSecret(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	secret := []byte(strings.TrimSpace(string(b)))
	if len(secret) < 16 {
		return nil, fmt.Errorf("%s: secret shorter than 16 bytes", path)
	}
	return secret, nil
}
