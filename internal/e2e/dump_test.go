package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

// dumpedSegment is one line of tcpdump -nn -t output: a TCP segment.
type dumpedSegment struct {
	src, dst netip.AddrPort
	flags    string // tcpdump's, e.g. "S", "S.", "P."
}

// readDump reads a pcap file with tcpdump -r -nn, as an operator would.
func readDump(t *testing.T, path string) []dumpedSegment {
	t.Helper()
	cmd := exec.Command("tcpdump", "-r", path, "-nn", "-t", "tcp")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tcpdump -r %s: %v\n%s", path, err, stderr.String())
	}
	var segs []dumpedSegment
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line == "" {
			continue
		}
		// IP 198.19.3.4.40000 > 198.18.1.2.80: Flags [S], seq ...
		// IP6 2001:2:0:ff::9.40000 > 2001:2:0:1::2.80: Flags [S.], ...
		_, rest, _ := strings.Cut(line, " ")
		src, rest, ok1 := strings.Cut(rest, " > ")
		dst, rest, ok2 := strings.Cut(rest, ": Flags [")
		flags, _, ok3 := strings.Cut(rest, "]")
		s, serr := tcpdumpEndpoint(src)
		d, derr := tcpdumpEndpoint(dst)
		if !ok1 || !ok2 || !ok3 || serr != nil || derr != nil {
			t.Fatalf("%s: unexpected tcpdump line %q", path, line)
		}
		segs = append(segs, dumpedSegment{s, d, flags})
	}
	return segs
}

// tcpdumpEndpoint parses tcpdump's ADDR.PORT.
func tcpdumpEndpoint(s string) (netip.AddrPort, error) {
	i := strings.LastIndexByte(s, '.')
	if i < 0 {
		return netip.AddrPort{}, fmt.Errorf("no port in %q", s)
	}
	a, err := netip.ParseAddr(s[:i])
	if err != nil {
		return netip.AddrPort{}, err
	}
	p, err := strconv.ParseUint(s[i+1:], 10, 16)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(a, uint16(p)), nil
}

func inPool(a netip.Addr) bool { return lab.PoolV4.Contains(a) || lab.PoolV6.Contains(a) }

func isShadow80(ap netip.AddrPort) bool {
	return ap.Port() == 80 && (ap.Addr() == lab.ShadowV4 || ap.Addr() == lab.ShadowV6)
}

// predictForged asks `tcpshadow config check --client`, as an operator
// would, which addresses the copy daemon forges for the lab's client, with
// the harness's pools and the default seed.
func predictForged(t *testing.T) map[bool]netip.Addr {
	t.Helper()
	file := filepath.Join(t.TempDir(), "copy.toml")
	conf := fmt.Sprintf("[copy]\niface = %q\nmap = [\"80-%s:80\"]\nintercept = %q\nclient_pool = [%q, %q]\n",
		lab.ProdClientLink, lab.ShadowV4, lab.AssistV4.String(), lab.PoolV4.String(), lab.PoolV6.String())
	if err := os.WriteFile(file, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(binPath, "config", "check", file,
		"--client", lab.ClientV4.String(), "--client", lab.ClientV6.String()).CombinedOutput()
	if err != nil {
		t.Fatalf("config check: %v\n%s", err, out)
	}
	forged := make(map[bool]netip.Addr) // key: IPv4
	for _, line := range strings.Split(string(out), "\n") {
		if _, a, ok := strings.Cut(line, " forged as "); ok {
			addr, err := netip.ParseAddr(strings.TrimSpace(a))
			if err != nil {
				t.Fatalf("config check line %q: %v", line, err)
			}
			forged[addr.Is4()] = addr
		}
	}
	if !lab.PoolV4.Contains(forged[true]) || !lab.PoolV6.Contains(forged[false]) {
		t.Fatalf("config check forged %v, want one address in each pool:\n%s", forged, out)
	}
	return forged
}

// checkDumps checks a copy dump and an agent dump of the same period: the
// copy daemon sent only from the client's forged addresses (as config
// check predicts them) to the shadow's port 80, with a SYN for at least
// want sessions of each family, and the agent saw a SYN-ACK from the
// shadow for every one of those SYNs.
func checkDumps(t *testing.T, copyPath, agentPath string, want int, forged map[bool]netip.Addr) {
	t.Helper()
	synAcked := make(map[netip.AddrPort]bool)
	for _, s := range readDump(t, agentPath) {
		if s.flags == "S." {
			if !isShadow80(s.src) || !inPool(s.dst.Addr()) {
				t.Errorf("%s: SYN-ACK %v → %v, want the shadow's port 80 to the pool", agentPath, s.src, s.dst)
			}
			synAcked[s.dst] = true
		}
	}
	syns := make(map[netip.AddrPort]bool)
	v4, v6 := 0, 0
	for _, s := range readDump(t, copyPath) {
		if s.src.Addr() != forged[s.src.Addr().Is4()] || !isShadow80(s.dst) {
			t.Errorf("%s: %v → %v [%s], want the client's forged address %v to the shadow's port 80",
				copyPath, s.src, s.dst, s.flags, forged[s.src.Addr().Is4()])
		}
		if s.flags != "S" || syns[s.src] {
			continue
		}
		syns[s.src] = true
		if s.src.Addr().Is4() {
			v4++
		} else {
			v6++
		}
		if !synAcked[s.src] {
			t.Errorf("SYN from %v in %s, but no SYN-ACK to it in %s", s.src, copyPath, agentPath)
		}
	}
	if v4 < want || v6 < want {
		t.Errorf("%s: SYNs of %d IPv4 and %d IPv6 sessions, want at least %d of each", copyPath, v4, v6, want)
	}
}

// checkStats runs `tcpshadow stats` in prod against both daemons, as an
// operator would, and checks the tables show the scraped numbers in their
// stages (the sessions have drained, so the numbers hold still).
func checkStats(t *testing.T, e *env, copyM map[string]float64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tc := range []struct {
		addr   netip.Addr
		want   []string // lines, compared without alignment
		stages []string
	}{
		{lab.ProdClientSideV4, []string{
			"packets_sent " + strconv.FormatFloat(copyM[`tcpshadow_copy_events_total{event="packets_sent"}`], 'f', -1, 64),
			"sessions_started " + strconv.FormatFloat(copyM[`tcpshadow_copy_events_total{event="sessions_started"}`], 'f', -1, 64),
			"connected 1",
			"packets " + strconv.FormatFloat(copyM["tcpshadow_dump_packets_total"], 'f', -1, 64),
			"multiply 1",
		}, []string{"controls", "capture", "engine", "sessions", "agent link", "comparison", "dump"}},
		{lab.AssistV4, []string{"peers 1"}, []string{"capture", "relay", "peers", "dump"}},
	} {
		from := net.JoinHostPort(tc.addr.String(), metricsPort)
		out, err := e.lab.Prod.Run(ctx, binPath, "stats", "--from", from)
		if err != nil {
			t.Fatalf("stats --from %s: %v", from, err)
		}
		var lines, stages []string
		for _, l := range strings.Split(string(out), "\n") {
			switch {
			case strings.HasPrefix(l, "  "):
				lines = append(lines, strings.Join(strings.Fields(l), " "))
			case l != "" && !strings.Contains(l, " at http://"):
				stages = append(stages, l)
			}
		}
		if !slices.Equal(stages, tc.stages) {
			t.Errorf("stats --from %s: stages %q, want %q\n%s", from, stages, tc.stages, out)
		}
		for _, w := range tc.want {
			if !slices.Contains(lines, w) {
				t.Errorf("stats --from %s lacks %q:\n%s", from, w, out)
			}
		}
	}
}

// TestDump runs the copy daemon and the agent with --dump (and the copy
// daemon with --log-file), rotates all three files as logrotate does
// (rename, then SIGHUP) between two batches of requests, stops both
// daemons and reads the dumps with tcpdump: each batch is in its own file,
// the copy dump holds SYNs from the pool to the shadow (from the forged
// address config check --client predicts) and the agent dump the shadow's
// SYN-ACKs to the same forged endpoints.
func TestDump(t *testing.T) {
	dir := t.TempDir()
	copyDump, agentDump := filepath.Join(dir, "copy.pcap"), filepath.Join(dir, "agent.pcap")
	copyLog := filepath.Join(dir, "copy.log")
	e := newEnv(t, envOptions{
		copyArgs:  []string{"--dump", copyDump, "--log-file", copyLog},
		agentArgs: []string{"--dump", agentDump},
	})
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range []string{copyLog + ".1", copyLog} {
				b, _ := os.ReadFile(p)
				t.Logf("%s:\n%s", p, b)
			}
		}
	})
	v4 := netip.AddrPortFrom(lab.ProdClientSideV4, 80).String()
	v6 := netip.AddrPortFrom(lab.ProdClientSideV6, 80).String()
	const perFamily = 3
	batch := func(name string) {
		client := e.lab.Client.HTTPClient(1)
		client.Transport.(*http.Transport).DisableKeepAlives = true // a session each
		defer client.CloseIdleConnections()
		for i := range perFamily {
			for _, host := range []string{v4, v6} {
				path := fmt.Sprintf("/%s/%d", name, i)
				do(t, client, http.MethodGet, "http://"+host+path, nil, path)
			}
		}
		e.checkCopied(t, "/"+name+"/", 2*perFamily)
	}

	batch("before")
	for _, p := range []string{copyDump, agentDump, copyLog} {
		if err := os.Rename(p, p+".1"); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []*lab.Process{e.copier, e.agent} {
		if err := p.Signal(syscall.SIGHUP); err != nil {
			t.Fatalf("SIGHUP %v: %v", p, err)
		}
	}
	e.waitFor("both daemons to reopen their files", 10*time.Second, func() bool {
		b, _ := os.ReadFile(copyLog)
		return bytes.Contains(b, []byte("reopened on SIGHUP")) && strings.Contains(e.agent.Output(), "reopened on SIGHUP")
	})
	if e.copier.Exited() || e.agent.Exited() {
		t.Fatal("a daemon exited on SIGHUP")
	}
	batch("after")
	e.drained(t, 30*time.Second)

	copyM, err := e.copyMetrics()
	if err != nil {
		t.Fatal(err)
	}
	agentM, err := e.agentMetrics()
	if err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]map[string]float64{"copy": copyM, "agent": agentM} {
		if m["tcpshadow_dump_packets_total"] == 0 || m["tcpshadow_dump_errors_total"] != 0 || m["tcpshadow_dump_dropped_total"] != 0 {
			t.Errorf("%s dump metrics: packets %v, errors %v, dropped %v", name, m["tcpshadow_dump_packets_total"],
				m["tcpshadow_dump_errors_total"], m["tcpshadow_dump_dropped_total"])
		}
	}
	if copyM["tcpshadow_dump_packets_total"] < copyM[`tcpshadow_copy_events_total{event="packets_sent"}`] {
		t.Errorf("copy dump holds %v packets, fewer than the %v sent", copyM["tcpshadow_dump_packets_total"],
			copyM[`tcpshadow_copy_events_total{event="packets_sent"}`])
	}
	checkStats(t, e, copyM)

	// Stop both so the dumps are flushed and closed.
	for _, p := range []*lab.Process{e.copier, e.agent} {
		if err := p.Stop(10 * time.Second); err != nil {
			t.Logf("stop %v: %v", p, err)
		}
		if !p.Exited() {
			t.Fatalf("%v did not stop", p)
		}
	}
	forged := predictForged(t)
	checkDumps(t, copyDump+".1", agentDump+".1", perFamily, forged)
	checkDumps(t, copyDump, agentDump, perFamily, forged)

	before, _ := os.ReadFile(copyLog + ".1")
	after, _ := os.ReadFile(copyLog)
	if !bytes.Contains(before, []byte("copying")) || bytes.Contains(before, []byte("reopened on SIGHUP")) {
		t.Errorf("log before the rotation:\n%s", before)
	}
	if !bytes.Contains(after, []byte("reopened on SIGHUP")) || !bytes.Contains(after, []byte("stopped")) {
		t.Errorf("log after the rotation:\n%s", after)
	}
}
