package e2e

import (
	"context"
	"fmt"
	"net"
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

// The two-host deployment: the agent on the shadow (intercept --local),
// in the lab's two-host topology (no assist; the shadow routes the pools
// toward prod, so a reply the agent did not take would leave on the
// segment).

// localEnv is a two-host lab: nginx on prod and shadow, the agent on the
// shadow, the copy daemon on prod, and a capture of the shadow's port on
// the switch that sees any packet from the shadow to the pools.
type localEnv struct {
	t             *testing.T
	lab           *lab.Lab
	prod4, prod6  *nginx
	shadow4       *nginx
	shadow6       *nginx
	agent, copier *lab.Process
	agentArgs     []string
	leaks         *lab.Process // tcpdump on the shadow's switch port
	leakFile      string
	secret        string
	opts          localEnvOptions
}

// localSecret is the control channel's secret in the two-host tests.
const localSecret = "bG9jYWwtdHdvLWhvc3RzLXNlY3JldA=="

// localEnvOptions shape a localEnv; the zero value runs the agent as root.
type localEnvOptions struct {
	agentPrefix []string // run in front of the agent's binary (setpriv ...)
	bin         string   // the binary, when not binPath
	secretUID   int      // owner of the secret file
	// antiSpoofing: the switch drops prod's frames from forged sources;
	// tunnel: the agent receives the tunnel and the copier sends through
	// it (tunnel_test.go).
	antiSpoofing, tunnel bool
}

func newLocalEnv(t *testing.T) *localEnv { return newLocalEnvWith(t, localEnvOptions{}) }

func newLocalEnvWith(t *testing.T, o localEnvOptions) *localEnv {
	t.Helper()
	if _, err := exec.LookPath("tcpdump"); err != nil {
		t.Skip("tcpdump not installed")
	}
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl not installed")
	}
	l := lab.NewT(t, lab.Config{Prefix: "tslocal", TwoHosts: true, AntiSpoofing: o.antiSpoofing})
	e := &localEnv{t: t, lab: l, opts: o}
	e.watchLeaks()
	e.prod4 = startNginx(t, l.Prod, netip.AddrPortFrom(lab.ProdClientSideV4, 80), time.Minute)
	e.prod6 = startNginx(t, l.Prod, netip.AddrPortFrom(lab.ProdClientSideV6, 80), time.Minute)
	e.shadow4 = startNginx(t, l.Shadow, netip.AddrPortFrom(lab.ShadowV4, 80), time.Minute)
	e.shadow6 = startNginx(t, l.Shadow, netip.AddrPortFrom(lab.ShadowV6, 80), time.Minute)
	e.secret = writeSecretFile(t, localSecret, o.secretUID)
	e.agentArgs = []string{"intercept", "--local", "--to", lab.PoolV4.String(), "--to", lab.PoolV6.String(),
		"--listen", net.JoinHostPort(lab.ShadowV4.String(), agentPort),
		"--metrics", net.JoinHostPort(lab.ShadowV4.String(), metricsPort),
		"--stats-interval", "0", "--secret-file", e.secret}
	if o.tunnel {
		e.agentArgs = append(e.agentArgs, "--tunnel")
	}
	e.startAgent()
	t.Cleanup(func() {
		if t.Failed() {
			if e.copier != nil {
				t.Logf("copy daemon output:\n%s", e.copier.Output())
			}
			t.Logf("agent output:\n%s", e.agent.Output())
		}
	})
	args := []string{"copy", "--iface", lab.ProdClientLink,
		"--map", fmt.Sprintf("%s:80-%s:80", lab.ProdClientSideV4, lab.ShadowV4),
		"--map", fmt.Sprintf("[%s]:80-[%s]:80", lab.ProdClientSideV6, lab.ShadowV6),
		"--intercept", lab.ShadowV4.String(),
		"--client-pool", lab.PoolV4.String(), "--client-pool", lab.PoolV6.String(),
		"--metrics", net.JoinHostPort(lab.ProdClientSideV4.String(), metricsPort),
		"--stats-interval", "0", "--linger", "1s", "--idle-timeout", "10s", "--workers", "2",
		"--secret-file", writeSecretFile(t, localSecret, 0)} // the copier wants its own file root's
	if o.tunnel {
		args = append(args, "--transport", "udp")
	}
	var err error
	e.copier, err = l.Prod.Start(context.Background(), binPath, args...)
	if err != nil {
		t.Fatal(err)
	}
	if !waitFor(t, "copy daemon connected to the agent", 10*time.Second, func() bool {
		m, err := scrape(l.Prod, net.JoinHostPort(lab.ProdClientSideV4.String(), metricsPort))
		return err == nil && m["tcpshadow_agent_connected"] == 1
	}) {
		t.FailNow()
	}
	return e
}

// startAgent starts the agent on the shadow and waits until prod reaches
// its port.
func (e *localEnv) startAgent() {
	e.t.Helper()
	bin := binPath
	if e.opts.bin != "" {
		bin = e.opts.bin
	}
	argv := append(append(slices.Clone(e.opts.agentPrefix), bin), e.agentArgs...)
	p, err := e.lab.Shadow.Start(context.Background(), argv[0], argv[1:]...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.agent = p
	addr := net.JoinHostPort(lab.ShadowV4.String(), agentPort)
	if !waitFor(e.t, "the agent listening on "+addr, 10*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		c, err := e.lab.Prod.DialContext(ctx, "tcp", addr)
		if err != nil {
			return false
		}
		c.Close()
		return true
	}) {
		e.t.Fatalf("agent output:\n%s", p.Output())
	}
}

// watchLeaks captures, on the switch's port to the shadow, every packet
// the shadow sends to a pool address, for the test's duration.
func (e *localEnv) watchLeaks() {
	e.leakFile = filepath.Join(e.t.TempDir(), "leaks.pcap")
	var err error
	e.leaks, err = e.lab.Switch.Start(context.Background(), "tcpdump", "-i", "p-"+lab.RoleShadow, "-nn", "-U",
		"-w", e.leakFile, fmt.Sprintf("dst net %s or dst net %s", lab.PoolV4, lab.PoolV6))
	if err != nil {
		e.t.Fatal(err)
	}
	waitFor(e.t, "tcpdump listening", 10*time.Second, func() bool {
		return strings.Contains(e.leaks.Output(), "listening on")
	})
}

// leaked stops the capture and returns the packets it saw, one line each.
func (e *localEnv) leaked() []string {
	e.t.Helper()
	e.leaks.Stop(5 * time.Second)
	out, err := exec.Command("tcpdump", "-r", e.leakFile, "-nn").Output()
	if err != nil {
		e.t.Fatalf("tcpdump -r: %v", err)
	}
	return strings.Fields(strings.ReplaceAll(strings.TrimSpace(string(out)), " ", "_"))
}

// curl fetches urls in one curl run from the client (one connection for
// all of them when keepAlive, else one each) and returns how many
// connections it opened.
func (e *localEnv) curl(keepAlive bool, urls ...string) int {
	e.t.Helper()
	args := []string{"-sS", "-g", "--max-time", "60", "-o", "/dev/null", "-w", "%{http_code} %{num_connects}\n"}
	if !keepAlive {
		args = append(args, "-H", "Connection: close")
	}
	for range urls[1:] {
		args = append(args, "-o", "/dev/null") // one per URL
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out, err := e.lab.Client.Run(ctx, "curl", append(args, urls...)...)
	if err != nil {
		e.t.Fatalf("curl: %v: %s", err, out)
	}
	conns := 0
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != len(urls) {
		e.t.Fatalf("curl answered %d of %d requests:\n%s", len(lines), len(urls), out)
	}
	for _, line := range lines {
		var code, n int
		if _, err := fmt.Sscan(line, &code, &n); err != nil || code != 200 {
			e.t.Fatalf("curl: %q", line)
		}
		conns += n
	}
	return conns
}

// urls returns n URLs on host under prefix.
func urls(host, prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("http://%s%s/%d", host, prefix, i)
	}
	return out
}

// copyEveryShape sends ka keep-alive requests on one connection and once
// requests on a connection each, over IPv4 and then IPv6, and checks that
// the shadow served every one prod served.
func (e *localEnv) copyEveryShape(ka, once int) {
	e.t.Helper()
	for _, fam := range []struct {
		name, host   string
		prod, shadow *nginx
	}{
		{"4", lab.ProdClientSideV4.String(), e.prod4, e.shadow4},
		{"6", "[" + lab.ProdClientSideV6.String() + "]", e.prod6, e.shadow6},
	} {
		if n := e.curl(true, urls(fam.host, "/ka"+fam.name, ka)...); n != 1 {
			e.t.Fatalf("IPv%s keep-alive curl opened %d connections, want 1", fam.name, n)
		}
		e.checkCopied(fam.prod, fam.shadow, "/ka"+fam.name+"/", ka)
		if n := e.curl(false, urls(fam.host, "/once"+fam.name, once)...); n != once {
			e.t.Fatalf("IPv%s Connection: close curl opened %d connections, want %d", fam.name, n, once)
		}
		e.checkCopied(fam.prod, fam.shadow, "/once"+fam.name+"/", once)
	}
}

// checkCopied waits until the shadow's nginx has logged as many requests
// under prefix as prod's, and checks each came from the pool.
func (e *localEnv) checkCopied(prod, shadow *nginx, prefix string, want int) {
	e.t.Helper()
	if got := len(accessedAny(e.t, prod, prefix)); got != want {
		e.t.Fatalf("prod served %d %s requests, want %d", got, prefix, want)
	}
	if !waitFor(e.t, fmt.Sprintf("the shadow to serve %d %s requests", want, prefix), 60*time.Second, func() bool {
		return len(accessedAny(e.t, shadow, prefix)) >= want
	}) {
		e.dumpMetrics()
		e.t.FailNow()
	}
	got := accessedAny(e.t, shadow, prefix)
	if len(got) != want {
		e.t.Fatalf("the shadow served %d %s requests, want %d", len(got), prefix, want)
	}
	seen := make(map[string]bool)
	for _, a := range got {
		if !lab.PoolV4.Contains(a.from.Addr()) && !lab.PoolV6.Contains(a.from.Addr()) {
			e.t.Fatalf("the shadow served %s to %v, outside the pools", a.path, a.from)
		}
		seen[a.path] = true
	}
	if len(seen) != want {
		e.t.Fatalf("the shadow served %d distinct %s paths, want %d", len(seen), prefix, want)
	}
}

// accessedAny is nginx.accessed for either family: nginx logs an IPv6
// client unbracketed ("2001:2::2:40000").
func accessedAny(t *testing.T, n *nginx, prefix string) []accessEntry {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(n.dir, "access.log"))
	if err != nil {
		t.Fatal(err)
	}
	var out []accessEntry
	for _, line := range strings.Split(string(b), "\n") {
		fs := strings.Fields(line)
		if len(fs) < 2 || !strings.HasPrefix(fs[1], prefix) {
			continue
		}
		i := strings.LastIndexByte(fs[0], ':')
		if i < 0 {
			continue
		}
		a, err1 := netip.ParseAddr(fs[0][:i])
		port, err2 := strconv.ParseUint(fs[0][i+1:], 10, 16)
		if err1 != nil || err2 != nil {
			continue
		}
		out = append(out, accessEntry{from: netip.AddrPortFrom(a.Unmap(), uint16(port)), path: fs[1]})
	}
	return out
}

func (e *localEnv) agentMetrics() map[string]float64 {
	m, err := scrape(e.lab.Prod, net.JoinHostPort(lab.ShadowV4.String(), metricsPort))
	if err != nil {
		e.t.Fatalf("agent metrics: %v", err)
	}
	return m
}

func (e *localEnv) dumpMetrics() {
	for _, d := range []struct{ name, addr string }{
		{"agent", net.JoinHostPort(lab.ShadowV4.String(), metricsPort)},
		{"copy daemon", net.JoinHostPort(lab.ProdClientSideV4.String(), metricsPort)},
	} {
		m, err := scrape(e.lab.Prod, d.addr)
		var lines []string
		for k, v := range m {
			if v != 0 && strings.HasPrefix(k, "tcpshadow_") {
				lines = append(lines, fmt.Sprintf("  %s %g", k, v))
			}
		}
		slices.Sort(lines)
		e.t.Logf("%s metrics (%v):\n%s", d.name, err, strings.Join(lines, "\n"))
	}
}

// rules returns the shadow's tcpshadow table as nft lists it, and
// whether it exists.
func (e *localEnv) rules() (string, bool) {
	out, err := e.lab.Shadow.Run(context.Background(), "nft", "list", "table", "inet", "tcpshadow_local")
	return string(out), err == nil
}

// TestLocalCopy: two hosts, the agent on the shadow. Keep-alive and
// one-connection-per-request HTTP, over IPv4 and IPv6, are copied 100%
// (every request prod served, served by the shadow to a pool address),
// and no packet from the shadow to a pool crosses the segment.
func TestLocalCopy(t *testing.T) {
	e := newLocalEnv(t)
	e.copyEveryShape(300, 100)

	m := e.agentMetrics()
	if m["tcpshadow_intercept_queue_read_total"] == 0 || m["tcpshadow_intercept_relayed_total"] == 0 {
		t.Errorf("agent read %v packets from the queue and relayed %v", m["tcpshadow_intercept_queue_read_total"], m["tcpshadow_intercept_relayed_total"])
	}
	for _, k := range []string{"tcpshadow_intercept_queue_dropped_total", "tcpshadow_intercept_queue_user_dropped_total",
		"tcpshadow_intercept_queue_malformed_total", "tcpshadow_intercept_dropped_queue_total"} {
		if m[k] != 0 {
			t.Errorf("%s = %v, want 0", k, m[k])
		}
	}
	t.Logf("queue read %v, relayed %v", m["tcpshadow_intercept_queue_read_total"], m["tcpshadow_intercept_relayed_total"])
	if leaks := e.leaked(); len(leaks) != 0 {
		t.Fatalf("%d packets from the shadow to the pools crossed the segment, first: %s", len(leaks), leaks[0])
	}
}

// TestLocalRulesLifecycle: the agent's rules are in place while it runs,
// gone after SIGTERM (after which a packet to a pool does leave: the
// capture that saw none before sees it); after SIGKILL they stay and
// drop (fail closed: nothing leaves); a restart replaces them once, not
// duplicated, and the copy works again; the next SIGTERM removes them.
func TestLocalRulesLifecycle(t *testing.T) {
	e := newLocalEnv(t)
	host4 := lab.ProdClientSideV4.String()
	ruleCount := func(s string) int { return strings.Count(s, "counter packets") }
	if s, ok := e.rules(); !ok || ruleCount(s) != 2 || !strings.Contains(s, "hook output priority raw - 10") {
		t.Fatalf("rules while running (present %v):\n%s", ok, s)
	}
	send := func(dst string) {
		t.Helper()
		if err := e.lab.Shadow.Do(func() error {
			c, err := net.Dial("udp", dst)
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte("after"))
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}

	// SIGKILL: the rules stay, with no agent bound: the kernel drops.
	if err := e.agent.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-e.agent.Done()
	if s, ok := e.rules(); !ok || ruleCount(s) != 2 {
		t.Fatalf("rules after SIGKILL (present %v):\n%s", ok, s)
	}
	send("198.19.0.9:9")
	send("[2001:2:0:ff::9]:9")
	if s, _ := e.rules(); strings.Count(s, "counter packets 1 ") != 2 {
		t.Fatalf("packets sent with the agent killed were not counted by the rules:\n%s", s)
	}

	// Restart: one table, two rules, and copying again.
	e.startAgent()
	waitFor(t, "the agent's warning about the rules it replaced", 10*time.Second, func() bool {
		return strings.Contains(e.agent.Output(), "replaced the nftables rules a previous run left")
	})
	if s, ok := e.rules(); !ok || ruleCount(s) != 2 {
		t.Fatalf("rules after restart (present %v):\n%s", ok, s)
	}
	if out, err := e.lab.Shadow.Run(context.Background(), "nft", "list", "tables"); err != nil || strings.Count(string(out), "tcpshadow_local") != 1 {
		t.Fatalf("tables after restart: %v\n%s", err, out)
	}
	waitFor(t, "copy daemon reconnected to the agent", 20*time.Second, func() bool {
		m, err := scrape(e.lab.Prod, net.JoinHostPort(lab.ProdClientSideV4.String(), metricsPort))
		return err == nil && m["tcpshadow_agent_connected"] == 1
	})
	if n := e.curl(false, urls(host4, "/again", 20)...); n != 20 {
		t.Fatalf("curl opened %d connections, want 20", n)
	}
	e.checkCopied(e.prod4, e.shadow4, "/again/", 20)

	// SIGTERM: the rules are gone.
	if err := e.agent.Stop(10 * time.Second); err != nil && !strings.Contains(err.Error(), "exit status") {
		t.Logf("agent stop: %v", err)
	}
	if !strings.Contains(e.agent.Output(), "removed the nftables rules") {
		t.Errorf("the agent did not log removing its rules:\n%s", e.agent.Output())
	}
	if s, ok := e.rules(); ok {
		t.Fatalf("rules after SIGTERM:\n%s", s)
	}
	if leaks := e.leaked(); len(leaks) != 0 {
		t.Fatalf("%d packets from the shadow to the pools crossed the segment while the rules were in place, first: %s", len(leaks), leaks[0])
	}
	// Without the rules the route carries a packet to a pool out: the
	// capture that saw nothing above does see it.
	e.watchLeaks()
	send("198.19.0.10:9")
	if !waitFor(t, "the capture to see a packet to the pool once the rules are gone", 10*time.Second, func() bool {
		out, _ := exec.Command("tcpdump", "-r", e.leakFile, "-nn").Output()
		return strings.Contains(string(out), "198.19.0.10")
	}) {
		t.FailNow()
	}
	e.leaks.Stop(5 * time.Second)
}

// doctor runs doctor --role shadow --local on the shadow and returns its
// output and whether it exited 0.
func (e *localEnv) doctor() (string, bool) {
	e.t.Helper()
	out, err := e.lab.Shadow.Run(context.Background(), binPath, "doctor", "--role", "shadow", "--local",
		"--to", lab.PoolV4.String(), "--to", lab.PoolV6.String())
	return string(out), err == nil
}

// TestLocalDoctor: doctor --role shadow --local passes every check while
// the agent runs and copies; names the unbound queue once the agent is
// killed (rules still dropping), and the missing table once it stopped.
func TestLocalDoctor(t *testing.T) {
	e := newLocalEnv(t)
	if n := e.curl(false, urls(lab.ProdClientSideV4.String(), "/doc", 5)...); n != 5 {
		t.Fatalf("curl opened %d connections", n)
	}
	e.checkCopied(e.prod4, e.shadow4, "/doc/", 5)
	out, ok := e.doctor()
	if !ok || !strings.Contains(out, "doctor --role shadow: 6 ok, 0 warn, 0 FAIL") ||
		!strings.Contains(out, "ok   no_leak 198.19.0.0/16: the route (via 198.18.1.1 dev eth0) is never used") {
		t.Fatalf("doctor with the agent running (exit 0: %v):\n%s", ok, out)
	}
	t.Logf("doctor, agent running:\n%s", out)

	if err := e.agent.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-e.agent.Done()
	out, ok = e.doctor()
	if ok || !strings.Contains(out, "FAIL queue 36524: no agent bound") || !strings.Contains(out, "5 ok, 0 warn, 1 FAIL") {
		t.Fatalf("doctor with the agent killed (exit 0: %v):\n%s", ok, out)
	}

	e.startAgent()
	if err := e.agent.Stop(10 * time.Second); err != nil && !strings.Contains(err.Error(), "exit status") {
		t.Logf("agent stop: %v", err)
	}
	out, ok = e.doctor()
	if ok || !strings.Contains(out, "FAIL rules inet tcpshadow_local: table missing") ||
		!strings.Contains(out, "FAIL no_leak 198.19.0.0/16: replies to the pool leave via 198.18.1.1 dev eth0") {
		t.Fatalf("doctor with the agent stopped (exit 0: %v):\n%s", ok, out)
	}
	if leaks := e.leaked(); len(leaks) != 0 {
		t.Fatalf("%d packets from the shadow to the pools crossed the segment, first: %s", len(leaks), leaks[0])
	}
}

// TestLocalCapsOnly: the agent in the two-host mode runs as user nobody
// with CAP_NET_ADMIN alone (nftables and the NFQUEUE binding need it,
// capture no longer does): it installs its rules, the copy is complete,
// and SIGTERM removes them.
func TestLocalCapsOnly(t *testing.T) {
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv not installed")
	}
	e := newLocalEnvWith(t, localEnvOptions{
		agentPrefix: unprivileged([]string{"CAP_NET_ADMIN"}),
		bin:         worldExecutable(t, binPath),
		secretUID:   65534,
	})
	if n := e.curl(false, urls(lab.ProdClientSideV4.String(), "/caps", 20)...); n != 20 {
		t.Fatalf("curl opened %d connections", n)
	}
	e.checkCopied(e.prod4, e.shadow4, "/caps/", 20)
	if _, ok := e.rules(); !ok {
		t.Fatal("no rules while the agent runs")
	}
	if err := e.agent.Stop(10 * time.Second); err != nil && !strings.Contains(err.Error(), "exit status") {
		t.Logf("agent stop: %v", err)
	}
	if s, ok := e.rules(); ok {
		t.Fatalf("rules after SIGTERM:\n%s", s)
	}
	if leaks := e.leaked(); len(leaks) != 0 {
		t.Fatalf("%d packets from the shadow to the pools crossed the segment, first: %s", len(leaks), leaks[0])
	}
}
