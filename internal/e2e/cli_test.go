package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

// exitBound bounds how long a daemon may take to stop after a signal. It
// is a hang guard, not a performance threshold: a clean stop takes well
// under a second (logged).
const exitBound = 30 * time.Second

// holdConns opens n HTTP/1.1 keep-alive connections from the client to
// addr, sends one request on each and reads its response, and leaves them
// open; they are closed in t.Cleanup. Requests use paths prefix/i.
func holdConns(t *testing.T, l *lab.Lab, addr, prefix string, n int) {
	t.Helper()
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := l.Client.DialContext(ctx, "tcp", addr)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		path := fmt.Sprintf("%s/%d", prefix, i)
		if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, addr); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%s %s: %v", addr, path, err)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || resp.Close {
			t.Fatalf("%s %s: status %d, close %v, err %v", addr, path, resp.StatusCode, resp.Close, err)
		}
		_ = c.SetDeadline(time.Time{})
	}
}

// shadowPoolConns lists the shadow's ESTABLISHED TCP connections whose
// peer lies in a client pool, as "local peer" lines from ss.
func shadowPoolConns(t *testing.T, l *lab.Lab) []string {
	t.Helper()
	out, err := l.Shadow.Run(context.Background(), "ss", "-Htn", "state", "established")
	if err != nil {
		t.Fatal(err)
	}
	var conns []string
	for _, line := range strings.Split(string(out), "\n") {
		// With a state filter ss prints Recv-Q Send-Q Local Peer.
		fs := strings.Fields(line)
		if len(fs) < 4 {
			continue
		}
		peer, err := netip.ParseAddrPort(fs[3])
		if err != nil {
			t.Fatalf("ss line %q: peer: %v", line, err)
		}
		if a := peer.Addr().Unmap(); lab.PoolV4.Contains(a) || lab.PoolV6.Contains(a) {
			conns = append(conns, fs[2]+" "+fs[3])
		}
	}
	return conns
}

// waitExit waits up to exitBound for p to exit after a signal sent at
// start and returns its exit error.
func waitExit(t *testing.T, p *lab.Process, start time.Time) error {
	t.Helper()
	select {
	case <-p.Done():
		t.Logf("pid %d exited %v after the signal", p.PID(), time.Since(start).Round(time.Millisecond))
		return p.Wait()
	case <-time.After(exitBound):
		t.Fatalf("%v still running %v after the signal:\n%s", p, exitBound, p.Output())
		return nil
	}
}

// heldConns is how many keep-alive connections the signal tests hold
// open per address family.
const heldConns = 3

// heldEnvOptions keep held sessions from idling out before the signal.
var heldEnvOptions = envOptions{copyArgs: []string{"--idle-timeout", "10m"}}

// holdSessions holds keep-alive connections to prod in both families and
// waits until the shadow has an established session for each.
func holdSessions(t *testing.T, e *env) {
	t.Helper()
	holdConns(t, e.lab, netip.AddrPortFrom(lab.ProdClientSideV4, 80).String(), "/held4", heldConns)
	holdConns(t, e.lab, netip.AddrPortFrom(lab.ProdClientSideV6, 80).String(), "/held6", heldConns)
	e.checkCopied(t, "/held4/", heldConns)
	e.checkCopied(t, "/held6/", heldConns)
	var conns []string
	if !waitFor(t, fmt.Sprintf("%d established pool connections in the shadow", 2*heldConns), 10*time.Second, func() bool {
		conns = shadowPoolConns(t, e.lab)
		return len(conns) == 2*heldConns
	}) {
		t.Fatalf("shadow connections from the pool: %q", conns)
	}
}

// TestCopyStopsCleanlyOnSIGTERM stops the copy daemon with SIGTERM while
// the client holds keep-alive connections, so the shadow has established
// sessions: the daemon exits 0 and its shutdown resets every session it
// held, leaving the shadow no established connection from the pool
// (scenario 20: every abnormal end resets the shadow's side).
func TestCopyStopsCleanlyOnSIGTERM(t *testing.T) {
	e := newEnv(t, heldEnvOptions)
	holdSessions(t, e)

	start := time.Now()
	if err := e.copier.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := waitExit(t, e.copier, start); err != nil {
		t.Fatalf("copy daemon exited with %v after SIGTERM, want status 0:\n%s", err, e.copier.Output())
	}
	out := e.copier.Output()
	if !strings.Contains(out, "msg=stopped") {
		t.Errorf("no stop summary in the output:\n%s", out)
	}
	if want := fmt.Sprintf("sessions_ended.shutdown=%d", 2*heldConns); !strings.Contains(out, want) {
		t.Errorf("stop summary lacks %s:\n%s", want, out)
	}
	// The RSTs are sent before the daemon exits; the shadow's stack handles
	// them in softirq, so allow it a moment. Without them the connections
	// would stay established for minutes (keep-alive probes to the pool die
	// at the assist).
	var left []string
	if !waitFor(t, "shadow connections from the pool to be reset", 5*time.Second, func() bool {
		left = shadowPoolConns(t, e.lab)
		return len(left) == 0
	}) {
		t.Fatalf("still established in the shadow after the copy daemon stopped: %q\n%s", left, out)
	}
	if n := e.shadowLeaks(); n != 0 {
		t.Fatalf("%d packets from the shadow reached the client namespace", n)
	}
}

// TestInterceptStopsCleanlyOnSIGINT stops the intercept agent with SIGINT
// while a copy daemon is connected and flows are registered: the agent
// exits 0, and the copy daemon notices and keeps running (section 5: the
// old tool exited when the agent went away).
func TestInterceptStopsCleanlyOnSIGINT(t *testing.T) {
	e := newEnv(t, heldEnvOptions)
	holdSessions(t, e)
	m, err := e.agentMetrics()
	if err != nil {
		t.Fatal(err)
	}
	if m["tcpshadow_intercept_peers"] != 1 || m["tcpshadow_intercept_flows"] < 2*heldConns {
		t.Fatalf("agent has %v peers and %v flows before the signal, want 1 and at least %d",
			m["tcpshadow_intercept_peers"], m["tcpshadow_intercept_flows"], 2*heldConns)
	}

	start := time.Now()
	if err := e.agent.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if err := waitExit(t, e.agent, start); err != nil {
		t.Fatalf("agent exited with %v after SIGINT, want status 0:\n%s", err, e.agent.Output())
	}
	if out := e.agent.Output(); !strings.Contains(out, "msg=stopped") {
		t.Errorf("no stop summary in the agent's output:\n%s", out)
	}
	e.waitFor("copy daemon to see the agent gone", 10*time.Second, func() bool {
		m, err := e.copyMetrics()
		return err == nil && m["tcpshadow_agent_connected"] == 0
	})
	if e.copier.Exited() {
		t.Fatalf("copy daemon exited when the agent stopped:\n%s", e.copier.Output())
	}
}

// badConfigRun runs the binary in prod with every capability dropped
// (setpriv, util-linux), so anything privileged it tried before
// validating its flags — a raw socket, a capture, a netlink change — would
// fail with a permission error instead of the flag error. It returns the
// exit code and combined output.
func badConfigRun(t *testing.T, l *lab.Lab, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), exitBound)
	defer cancel()
	cmd := l.Prod.Command(ctx, "setpriv", append([]string{"--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--", binPath}, args...)...)
	cmd.WaitDelay = time.Second
	start := time.Now()
	outb, err := cmd.CombinedOutput()
	out := string(outb)
	t.Logf("%q: %v after %v: %s", args, err, time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))
	if ctx.Err() != nil {
		t.Fatalf("%q still running after %v", args, exitBound)
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out
	case errors.As(err, &ee) && ee.Exited():
		return ee.ExitCode(), out
	}
	t.Fatalf("%q: %v", args, err)
	return -1, ""
}

// TestCopyRejectsBadConfigBeforeTouchingAnything runs copy and intercept
// with one bad flag each: they exit 1 with one line naming the flag, and
// without trying anything privileged (they run without capabilities; a
// control run with good flags shows that would have failed differently).
func TestCopyRejectsBadConfigBeforeTouchingAnything(t *testing.T) {
	l := lab.NewT(t, lab.Config{})
	copyArgs := func(m string) []string {
		return []string{"copy", "--iface", lab.ProdClientLink, "--map", m,
			"--intercept", lab.AssistV4.String(), "--client-pool", lab.PoolV4.String(),
			"--metrics", net.JoinHostPort(lab.ProdClientSideV4.String(), metricsPort), "--stats-interval", "0"}
	}
	good := fmt.Sprintf("%s:80-%s:80", lab.ProdClientSideV4, lab.ShadowV4)

	t.Run("Control", func(t *testing.T) {
		code, out := badConfigRun(t, l, copyArgs(good)...)
		if code == 0 || !strings.Contains(out, "operation not permitted") {
			t.Fatalf("valid flags without capabilities: exit %d, output %q; want a permission error", code, out)
		}
	})

	tests := []struct {
		name string
		args []string
		want string
	}{
		{"BadMap", copyArgs("80-shadow:80"), `tcpshadow: --map "80-shadow:80"`},
		{"MixedFamilies", copyArgs(fmt.Sprintf("%s:80-[%s]:80", lab.ProdClientSideV4, lab.ShadowV6)), "tcpshadow: --map"},
		{"BadPool", append(copyArgs(good), "--client-pool", lab.PoolV4.String()), "tcpshadow: --client-pool"},
		{"BadWorkers", append(copyArgs(good), "--workers", "-1"), "tcpshadow: --workers -1"},
		{"BadIntercept", append(copyArgs(good), "--intercept", lab.AssistV4.String()+":0"), "tcpshadow: --intercept"},
		{"AgentBadListen", []string{"intercept", "--iface", lab.HostLink, "--listen", lab.AssistV4.String()}, "tcpshadow: --listen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out := badConfigRun(t, l, tt.args...)
			if code != 1 {
				t.Errorf("exit status %d, want 1", code)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], tt.want) {
				t.Errorf("output %q, want one line starting %q", out, tt.want)
			}
		})
	}
}

// ipJSON runs ip -j args in ns and decodes its output.
func ipJSON(t *testing.T, ns *lab.NS, args ...string) []map[string]any {
	t.Helper()
	out, err := ns.Run(context.Background(), "ip", append([]string{"-j"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	var v []map[string]any
	if s := strings.TrimSpace(string(out)); s != "" {
		if err := json.Unmarshal([]byte(s), &v); err != nil {
			t.Fatalf("ip -j %q: %v: %s", args, err, out)
		}
	}
	return v
}

// routeGateways returns the gateways of the routes for exactly p in table
// ("main" or a number), as ip shows them.
func routeGateways(t *testing.T, ns *lab.NS, p netip.Prefix, table string) []string {
	t.Helper()
	fam := "-4"
	if p.Addr().Is6() {
		fam = "-6"
	}
	var gws []string
	for _, r := range ipJSON(t, ns, fam, "route", "show", "table", table, "exact", p.String()) {
		gw, _ := r["gateway"].(string)
		gws = append(gws, gw)
	}
	return gws
}

// rulesTo returns the priorities of the policy rules to p looking up
// table.
func rulesTo(t *testing.T, ns *lab.NS, p netip.Prefix, table string) []float64 {
	t.Helper()
	fam := "-4"
	if p.Addr().Is6() {
		fam = "-6"
	}
	var prios []float64
	for _, r := range ipJSON(t, ns, fam, "rule", "show") {
		dst, _ := r["dst"].(string)
		bits, _ := r["dstlen"].(float64)
		tbl, _ := r["table"].(string)
		prio, _ := r["priority"].(float64)
		if dst == p.Addr().String() && int(bits) == p.Bits() && tbl == table {
			prios = append(prios, prio)
		}
	}
	return prios
}

// TestRouteCommand runs tcpshadow route in the shadow namespace: add is
// idempotent (the lab's own pool route included), show names the assist
// as next hop, del removes the route, and with --table a policy rule
// comes and goes with it; both address families.
func TestRouteCommand(t *testing.T) {
	// The race-enabled binary sleeps 1 s on a successful exit by default
	// (to let late race reports out); this test runs it some thirty times.
	t.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	l := lab.NewT(t, lab.Config{})
	sh := l.Shadow
	tcpshadow := func(t *testing.T, args ...string) string {
		t.Helper()
		out, err := sh.Run(context.Background(), binPath, append([]string{"route"}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	equal := func(got []string, want ...string) bool {
		return strings.Join(got, ",") == strings.Join(want, ",")
	}

	for _, fam := range []struct {
		name      string
		assist    netip.Addr
		pool, new netip.Prefix // the lab's pool route; a prefix nothing routes
	}{
		{"IPv4", lab.AssistV4, lab.PoolV4, netip.MustParsePrefix("198.18.200.0/24")},
		{"IPv6", lab.AssistV6, lab.PoolV6, netip.MustParsePrefix("2001:2:0:c8::/64")},
	} {
		t.Run(fam.name, func(t *testing.T) {
			via := fam.assist.String()
			probe := fam.new.Addr().Next()

			// The lab routes the pool via the assist already: add again.
			for range 2 {
				tcpshadow(t, "add", "--via", via, "--to", fam.pool.String())
				if gws := routeGateways(t, sh, fam.pool, "main"); !equal(gws, via) {
					t.Fatalf("pool route after add: gateways %q, want [%s]", gws, via)
				}
			}

			// A new prefix in the main table, added twice.
			for range 2 {
				out := tcpshadow(t, "add", "--via", via, "--to", fam.new.String())
				if want := fmt.Sprintf("%v via %s\n", fam.new, via); out != want {
					t.Errorf("add printed %q, want %q", out, want)
				}
				if gws := routeGateways(t, sh, fam.new, "main"); !equal(gws, via) {
					t.Fatalf("after add: gateways %q, want [%s]", gws, via)
				}
			}
			out := tcpshadow(t, "show", "--to", fam.new.String())
			if want := fmt.Sprintf("%v: via %s dev %s\n", fam.new, via, lab.HostLink); out != want {
				t.Errorf("show printed %q, want %q", out, want)
			}
			for range 2 { // del is idempotent too
				out = tcpshadow(t, "del", "--to", fam.new.String())
				if want := fmt.Sprintf("%v removed\n", fam.new); out != want {
					t.Errorf("del printed %q, want %q", out, want)
				}
				if gws := routeGateways(t, sh, fam.new, "main"); len(gws) != 0 {
					t.Fatalf("after del: gateways %q", gws)
				}
			}
			if out := tcpshadow(t, "show", "--to", fam.new.String()); !strings.Contains(out, ": no route") {
				t.Errorf("show after del printed %q, want no route for %v", out, probe)
			}

			// In table 100, selected by a rule at priority 1000.
			for range 2 {
				out := tcpshadow(t, "add", "--via", via, "--to", fam.new.String(), "--table", "100")
				if want := fmt.Sprintf("%v via %s (table 100)\n", fam.new, via); out != want {
					t.Errorf("add printed %q, want %q", out, want)
				}
				if gws := routeGateways(t, sh, fam.new, "100"); !equal(gws, via) {
					t.Fatalf("after add: table 100 gateways %q, want [%s]", gws, via)
				}
				if gws := routeGateways(t, sh, fam.new, "main"); len(gws) != 0 {
					t.Fatalf("after add to table 100: main table gateways %q", gws)
				}
				if prios := rulesTo(t, sh, fam.new, "100"); len(prios) != 1 || prios[0] != 1000 {
					t.Fatalf("after add: rules to %v lookup 100 at priorities %v, want [1000]", fam.new, prios)
				}
			}
			// The route is reachable only through the rule.
			out = tcpshadow(t, "show", "--to", fam.new.String())
			if want := fmt.Sprintf("%v: via %s dev %s\n", fam.new, via, lab.HostLink); out != want {
				t.Errorf("show printed %q, want %q", out, want)
			}
			out = tcpshadow(t, "del", "--to", fam.new.String(), "--table", "100")
			if want := fmt.Sprintf("%v removed (table 100)\n", fam.new); out != want {
				t.Errorf("del printed %q, want %q", out, want)
			}
			if gws := routeGateways(t, sh, fam.new, "100"); len(gws) != 0 {
				t.Fatalf("after del: table 100 gateways %q", gws)
			}
			if prios := rulesTo(t, sh, fam.new, "100"); len(prios) != 0 {
				t.Fatalf("after del: rules to %v lookup 100 at priorities %v", fam.new, prios)
			}

			// The lab's own route is untouched.
			if gws := routeGateways(t, sh, fam.pool, "main"); !equal(gws, via) {
				t.Fatalf("pool route at the end: gateways %q, want [%s]", gws, via)
			}
		})
	}
}
