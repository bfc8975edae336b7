package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

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

// parseShare parses a share of connections: "30%" or a fraction, "0.3";
// above 0 and at most all.
func parseShare(s string) (float64, error) {
	t := strings.TrimSpace(s)
	pct := strings.HasSuffix(t, "%")
	v, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(t, "%")), 64)
	if err == nil && pct {
		v /= 100
	}
	if err != nil || math.IsNaN(v) || v <= 0 || v > 1 || !pct && v > 1 {
		return 0, errors.New("want a share above 0 and at most 100%, such as 30% or 0.3")
	}
	return v, nil
}

// formatShare writes a share as parseShare reads it.
func formatShare(v float64) string { return strconv.FormatFloat(v*100, 'g', -1, 64) + "%" }

// parseMaps parses the --map values: each [LOCALADDR:]PORT-TARGET, and
// after one, further targets sharing its sessions (80-A:80,B:80, which
// the flag splits at the comma): one Map per target, spread by flow
// hash. index(i) names the i-th value for errors.
func parseMaps(values []string, index func(int) string) ([]tcpstate.Map, error) {
	var maps []tcpstate.Map
	group := -1 // where the current map's targets start in maps
	for i, s := range values {
		if !strings.Contains(s, "-") && group >= 0 {
			first := maps[group]
			t, err := parseTarget(s, first.Local.Port())
			if err != nil {
				return nil, fmt.Errorf("%s %q: want [LOCALADDR:]PORT-TARGETADDR:PORT, or TARGETADDR:PORT after a map for another target of it", index(i), s)
			}
			if t.Addr().Is4() != first.Target.Addr().Is4() {
				return nil, fmt.Errorf("%s %q: another target of %s: of another address family", index(i), s, first)
			}
			n := len(maps) - group
			if n >= math.MaxUint8 {
				return nil, fmt.Errorf("%s %q: at most %d targets for one map", index(i), s, math.MaxUint8)
			}
			maps = append(maps, tcpstate.Map{Local: first.Local, Target: t, Share: uint8(n)})
			for j := group; j < len(maps); j++ {
				maps[j].Of = uint8(n + 1)
			}
			continue
		}
		m, err := parseMap(s)
		if err != nil {
			return nil, fmt.Errorf("%s %q: %w", index(i), s, err)
		}
		group = len(maps)
		maps = append(maps, m)
	}
	return maps, nil
}

// parseTarget parses a target, ADDR:PORT, or ADDR taking port.
func parseTarget(s string, port uint16) (netip.AddrPort, error) {
	s = strings.TrimSpace(s)
	if ap, err := netip.ParseAddrPort(s); err == nil && ap.Port() != 0 {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	if a, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
		return netip.AddrPortFrom(a.Unmap(), port), nil
	}
	return netip.AddrPort{}, errors.New("want ADDR:PORT ([ADDR]:PORT for IPv6)")
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

// minSecretLen is the shortest secret taken.
const minSecretLen = 16

// readSecret reads a copier's secret file; empty path means no secret.
func readSecret(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	b, err := readPrivate(path)
	if err != nil {
		return nil, err
	}
	secret := []byte(strings.TrimSpace(string(b)))
	if len(secret) < minSecretLen {
		return nil, fmt.Errorf("%s: secret shorter than %d bytes", path, minSecretLen)
	}
	return secret, nil
}

// readAgentSecrets reads the agent's secret file: one line is the secret
// every copy daemon shares; several lines (blank ones and # comments
// aside) are NAME SECRET, a secret per copy daemon, by the name it
// announces (--name). Empty path means no secret.
func readAgentSecrets(path string) (shared []byte, perName map[string][]byte, err error) {
	if path == "" {
		return nil, nil, nil
	}
	b, err := readPrivate(path)
	if err != nil {
		return nil, nil, err
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	if len(lines) <= 1 {
		shared, err := readSecret(path)
		return shared, nil, err
	}
	perName = make(map[string][]byte)
	for i, l := range lines {
		f := strings.Fields(l)
		if len(f) != 2 {
			return nil, nil, fmt.Errorf("%s: line %d: want NAME SECRET (a file of several lines holds one secret per copy daemon)", path, i+1)
		}
		if len(f[1]) < minSecretLen {
			return nil, nil, fmt.Errorf("%s: the secret of %q is shorter than %d bytes", path, f[0], minSecretLen)
		}
		if _, dup := perName[f[0]]; dup {
			return nil, nil, fmt.Errorf("%s: %q given twice", path, f[0])
		}
		perName[f[0]] = []byte(f[1])
	}
	return nil, perName, nil
}

// readPrivate reads a secret file, refusing one that others than its
// owner may read, or that belongs to someone else than this user or root:
// the secret would not be one. A file in systemd's $CREDENTIALS_DIRECTORY
// is systemd's to protect (it may grant the service's user access by an
// ACL, which shows as group bits): taken as it is.
func readPrivate(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	if !inCredentials(path) {
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			return nil, fmt.Errorf("%s: readable or writable by group or others (mode %04o): chmod 600 it", path, perm)
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 && int(st.Uid) != os.Geteuid() {
			return nil, fmt.Errorf("%s: owned by uid %d, neither root nor this user", path, st.Uid)
		}
	}
	return io.ReadAll(f)
}

// inCredentials reports whether path lies in $CREDENTIALS_DIRECTORY.
func inCredentials(path string) bool {
	dir := os.Getenv("CREDENTIALS_DIRECTORY")
	if dir == "" {
		return false
	}
	rel, err := filepath.Rel(filepath.Clean(dir), filepath.Clean(path))
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../") && rel != "."
}

// parseSlot parses a pool slot I/N.
func parseSlot(s string) (slot, slots int, err error) {
	a, b, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return 0, 0, errors.New("want SLOT/SLOTS, such as 0/1 (the whole pool) or 1/3")
	}
	if slot, err = strconv.Atoi(a); err == nil {
		slots, err = strconv.Atoi(b)
	}
	if err != nil || slots < 1 || slot < 0 || slot >= slots {
		return 0, 0, errors.New("want SLOT/SLOTS with 0 ≤ SLOT < SLOTS, such as 0/1 (the whole pool) or 1/3")
	}
	return slot, slots, nil
}
