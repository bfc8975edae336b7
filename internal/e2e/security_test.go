package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/internal/lab"
	"github.com/tcpshadow/tcpshadow/internal/testcert"
)

// refusedLog returns the agent's log lines reporting a refused peer at
// addr (logged with peer=ADDR, without a port, unlike connected peers).
func refusedLog(out string, addr string) []string {
	var lines []string
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, "level=WARN") {
			continue
		}
		for _, f := range strings.Fields(line) {
			if f == "peer="+addr {
				lines = append(lines, line)
				break
			}
		}
	}
	return lines
}

// sendGarbage connects from prod to the agent, writes random bytes and
// reads what the agent answers until it closes the connection. It returns
// the agent's error frame, or an error if the agent did not close the
// connection within the bound.
func sendGarbage(t *testing.T, l *lab.Lab, seed uint64) (*wire.PeerError, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := l.Prod.DialContext(ctx, "tcp", net.JoinHostPort(lab.AssistV4.String(), agentPort))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	// The handshake's own bound is 5 s; twice that says the agent never
	// hung up.
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(seed, seed))
	junk := make([]byte, 4096)
	for i := range junk {
		junk[i] = byte(rng.Uint32())
	}
	if _, err := c.Write(junk); err != nil {
		return nil, fmt.Errorf("write: %w", err)
	}
	r := wire.NewReader(c)
	var refusal *wire.PeerError
	for {
		typ, p, err := r.Next()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return refusal, fmt.Errorf("agent kept the connection open: %w", err)
			}
			return refusal, nil // EOF or reset: the agent closed it
		}
		if typ == wire.TypeError {
			if refusal, err = wire.ParseError(p); err != nil {
				return nil, fmt.Errorf("agent's error frame: %w", err)
			}
		}
	}
}

// watchConnected samples the copy daemon's tcpshadow_agent_connected
// every interval until stop is called, which returns how many samples
// were taken and how many did not read 1.
func (e *env) watchConnected(interval time.Duration) (stop func() (samples, down int)) {
	var n, bad atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			m, err := e.copyMetrics()
			n.Add(1)
			if err != nil || m["tcpshadow_agent_connected"] != 1 {
				bad.Add(1)
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	})
	var once sync.Once
	stop = func() (int, int) {
		once.Do(func() {
			cancel()
			wg.Wait()
		})
		return int(n.Load()), int(bad.Load())
	}
	e.t.Cleanup(func() { stop() })
	return stop
}

// mustMetrics scrapes a metrics endpoint or fails the test.
func mustMetrics(t *testing.T, get func() (map[string]float64, error)) map[string]float64 {
	t.Helper()
	m, err := get()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// refusals is the agent's count of refused and broken peer connections.
func refusals(m map[string]float64) float64 {
	return m["tcpshadow_intercept_peers_refused_total"] + m["tcpshadow_intercept_peer_errors_total"]
}

// TestControlChannelSecurity runs the agent with a shared secret and an
// allowlist holding prod only, and the copy daemon on prod with the
// secret, copying HTTP traffic. Meanwhile a copy daemon from the shadow
// (not on the allowlist, right secret), doctor with a wrong secret, and
// random bytes from prod are all refused, counted and logged once per
// address, while the authenticated channel stays up and copying stays
// complete (section 4 of the catalogue: authentication, no open port
// anyone can register flows on).
func TestControlChannelSecurity(t *testing.T) {
	dir := t.TempDir()
	secret := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	right := secret("right", "c2hhZG93LWNvbnRyb2wtY2hhbm5lbC1zZWNyZXQ=")
	wrong := secret("wrong", "bm90LXRoZS1hZ2VudHMtc2VjcmV0LWF0LWFsbA==")
	e := newEnv(t, envOptions{
		agentArgs: []string{"--secret-file", right, "--allow", lab.ProdV4.String()},
		copyArgs:  []string{"--secret-file", right},
	})
	v4 := prodV4.String()
	keepAlive(t, e.lab, v4, "/before", 5, 20)
	e.checkCopied(t, "/before/", 100)

	// The harness's readiness probe (a connect and close from prod) may
	// itself count as a refusal: the baselines are taken after it.
	baseCopy := mustMetrics(t, e.copyMetrics)
	baseAgent := mustMetrics(t, e.agentMetrics)
	stopWatch := e.watchConnected(50 * time.Millisecond)
	during := startPacedLoad(t, e.lab.Client, prodV4, "/during", 5, 20*time.Millisecond)

	t.Run("PortProbe", func(t *testing.T) {
		// A health check connects and hangs up without a word. It is no
		// copy daemon and no attack: the agent must not count it as a
		// refusal (nor log it, which would use up the one refusal line of
		// its address: see WrongSecret). Hanging up after the agent's
		// hello arrived, unread, makes the kernel reset the connection
		// rather than close it, as any checker slower than the hello does.
		before := mustMetrics(t, e.agentMetrics)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := e.lab.Prod.DialContext(ctx, "tcp", net.JoinHostPort(lab.AssistV4.String(), agentPort))
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
		c.Close()
		time.Sleep(500 * time.Millisecond) // the agent's read fails at once; give it time to count
		after := mustMetrics(t, e.agentMetrics)
		if got := refusals(after) - refusals(before); got != 0 {
			t.Errorf("agent counted a connect-and-close probe as %v refused or broken peers", got)
		}
	})

	t.Run("NotOnAllowlist", func(t *testing.T) {
		// The shadow holds the right secret but is not on the list. Its
		// map matches nothing: it must only try to connect.
		shadowMetrics := net.JoinHostPort(lab.ShadowV4.String(), metricsPort)
		rogue, err := e.lab.Shadow.Start(context.Background(), binPath, "copy", "--iface", lab.HostLink,
			"--map", fmt.Sprintf("%s:81-%s:81", lab.ShadowV4, lab.AssistV4),
			"--intercept", lab.AssistV4.String(), "--secret-file", right,
			"--metrics", shadowMetrics, "--stats-interval", "0", "--workers", "1")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = rogue.Stop(5 * time.Second) })
		before := mustMetrics(t, e.agentMetrics)
		// Its reconnect backoff (100 ms, doubling) makes several attempts
		// within a couple of seconds: the same attack repeated.
		const attempts = 4
		var rm map[string]float64
		if !waitFor(t, fmt.Sprintf("%d refused attempts from the shadow", attempts), 15*time.Second, func() bool {
			rm, err = scrape(e.lab.Shadow, shadowMetrics)
			return err == nil && rm["tcpshadow_agent_connect_failures_total"] >= attempts
		}) {
			t.Fatalf("shadow's copy daemon:\n%s", rogue.Output())
		}
		if rm["tcpshadow_agent_connected"] != 0 || rm["tcpshadow_agent_connects_total"] != 0 {
			t.Errorf("the shadow's copy daemon connected: connected %v, connects %v",
				rm["tcpshadow_agent_connected"], rm["tcpshadow_agent_connects_total"])
		}
		if err := rogue.Stop(5 * time.Second); err != nil && !strings.Contains(err.Error(), "signal") {
			t.Errorf("stop the shadow's copy daemon: %v", err)
		}
		out := rogue.Output()
		if !strings.Contains(out, "not on the agent's allowlist") {
			t.Errorf("the shadow's copy daemon does not say it is not allowed:\n%s", out)
		}
		after := mustMetrics(t, e.agentMetrics)
		refused := after["tcpshadow_intercept_peers_refused_total"] - before["tcpshadow_intercept_peers_refused_total"]
		t.Logf("shadow's copy daemon: %v failed attempts; agent refused %v connections", rm["tcpshadow_agent_connect_failures_total"], refused)
		if refused < attempts {
			t.Errorf("agent's peers_refused rose by %v, want at least %d", refused, attempts)
		}
		if lines := refusedLog(e.agent.Output(), lab.ShadowV4.String()); len(lines) != 1 || !strings.Contains(lines[0], "allowlist") {
			t.Errorf("agent logged the refused %s %d times over %v attempts, want once, saying allowlist:\n%s",
				lab.ShadowV4, len(lines), refused, e.agent.Output())
		}
	})

	t.Run("WrongSecret", func(t *testing.T) {
		before := mustMetrics(t, e.agentMetrics)
		agentAddr := net.JoinHostPort(lab.AssistV4.String(), agentPort)
		const runs = 2
		for range runs {
			d := runDoctor(t, e.lab.Prod, "--role", "prod", "--iface", lab.ProdClientLink,
				"--intercept", lab.AssistV4.String(), "--secret-file", wrong)
			if d.code == 0 {
				t.Errorf("doctor with the wrong secret exited 0")
			}
			if line := d.line("agent " + agentAddr); !strings.HasPrefix(line, "FAIL") ||
				!strings.Contains(line, "refused: auth") || !strings.Contains(line, "wrong secret") {
				t.Errorf("doctor's agent check %q, want FAIL ... refused: auth: wrong secret", line)
			}
		}
		after := mustMetrics(t, e.agentMetrics)
		if got := refusals(after) - refusals(before); got < runs {
			t.Errorf("agent counted %v refusals for %d doctor runs with the wrong secret", got, runs)
		}
		// The agent logs a refused address once: that line must say why a
		// daemon on prod, the allowed host, was refused, or the operator
		// never learns its secret is wrong.
		lines := refusedLog(e.agent.Output(), lab.ProdV4.String())
		if len(lines) == 0 || !strings.Contains(lines[0], "wrong secret") {
			t.Errorf("the agent's log never says prod was refused for a wrong secret; its refusal lines for %s: %q",
				lab.ProdV4, lines)
		}
	})

	t.Run("Garbage", func(t *testing.T) {
		before := mustMetrics(t, e.agentMetrics)
		const runs = 3
		for i := range runs {
			refusal, err := sendGarbage(t, e.lab, uint64(i+1))
			if err != nil {
				t.Fatalf("garbage %d: %v", i, err)
			}
			if refusal == nil || refusal.Code != wire.CodeProtocol {
				t.Errorf("garbage %d: agent's error frame %v, want a protocol error", i, refusal)
			}
		}
		var after map[string]float64
		// The agent counts after it closed: allow it a moment.
		if !waitFor(t, "the agent to count the garbage", 5*time.Second, func() bool {
			after = mustMetrics(t, e.agentMetrics)
			return refusals(after)-refusals(before) >= runs
		}) {
			t.Errorf("agent counted %v refusals or errors for %d garbage connections", refusals(after)-refusals(before), runs)
		}
	})

	// Prod's address was refused by doctor and garbage alike: one line
	// for all of it.
	if lines := refusedLog(e.agent.Output(), lab.ProdV4.String()); len(lines) != 1 {
		t.Errorf("agent logged refusals of %s %d times, want once:\n%s", lab.ProdV4, len(lines), e.agent.Output())
	}

	during.stop()
	samples, down := stopWatch()
	t.Logf("control channel sampled %d times during the attacks, %d not connected", samples, down)
	if down > 0 {
		t.Errorf("the authenticated copy daemon was not connected in %d of %d samples", down, samples)
	}
	m := mustMetrics(t, e.copyMetrics)
	if got, was := m["tcpshadow_agent_connects_total"], baseCopy["tcpshadow_agent_connects_total"]; got != was {
		t.Errorf("the authenticated copy daemon reconnected: connects_total %v → %v", was, got)
	}
	am := mustMetrics(t, e.agentMetrics)
	if am["tcpshadow_intercept_peers"] != 1 {
		t.Errorf("agent has %v peers, want the one copy daemon", am["tcpshadow_intercept_peers"])
	}
	t.Logf("agent: peers_refused %v → %v, peer_errors %v → %v",
		baseAgent["tcpshadow_intercept_peers_refused_total"], am["tcpshadow_intercept_peers_refused_total"],
		baseAgent["tcpshadow_intercept_peer_errors_total"], am["tcpshadow_intercept_peer_errors_total"])

	during.check(t, e, "/during/")
	e.checkCopied(t, "/during/", int(during.ok.Load()))
	keepAlive(t, e.lab, v4, "/after", 5, 20)
	e.checkCopied(t, "/after/", 100)
	if t.Failed() {
		e.dumpMetrics(t)
	}
}

// openFDs counts the file descriptors process pid holds.
func openFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestControlChannelTLS runs the agent with --tls-cert/--tls-key and the
// copy daemon with --tls-ca, both with the shared secret, and checks that
// traffic is copied over the TLS channel; that doctor with --tls-ca
// passes the agent check and without it, or trusting another CA, fails
// it saying so; and that the agent keeps no descriptor of the plain
// connections it refused.
func TestControlChannelTLS(t *testing.T) {
	cert := testcert.New(t, lab.AssistV4.String())
	certFile, keyFile := cert.Files(t)
	otherCA, _ := testcert.New(t, lab.AssistV4.String()).Files(t)
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("dGxzLWNvbnRyb2wtY2hhbm5lbC1zZWNyZXQ=\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOptions{
		agentArgs: []string{"--secret-file", secret, "--tls-cert", certFile, "--tls-key", keyFile},
		copyArgs:  []string{"--secret-file", secret, "--tls-ca", certFile},
	})
	e.waitFor("the copy daemon's TLS control channel", 10*time.Second, func() bool {
		m, err := e.copyMetrics()
		return err == nil && m["tcpshadow_agent_connected"] == 1
	})
	keepAlive(t, e.lab, prodV4.String(), "/tls", 5, 20)
	e.checkCopied(t, "/tls/", 100)

	agentAddr := net.JoinHostPort(lab.AssistV4.String(), agentPort)
	prod := []string{"--role", "prod", "--iface", lab.ProdClientLink, "--intercept", lab.AssistV4.String(), "--secret-file", secret}
	for _, tt := range []struct {
		name  string
		args  []string
		ok    bool
		words []string
	}{
		{"TrustedCA", []string{"--tls-ca", certFile}, true, []string{"accepted the handshake"}},
		{"Plain", nil, false, []string{"without a word", "--tls-ca"}},
		{"OtherCA", []string{"--tls-ca", otherCA}, false, []string{"TLS with the agent failed", "certificate"}},
	} {
		t.Run("Doctor"+tt.name, func(t *testing.T) {
			d := runDoctor(t, e.lab.Prod, append(slices.Clone(prod), tt.args...)...)
			line := d.line("agent " + agentAddr)
			want := "FAIL"
			if tt.ok {
				want = "ok"
			}
			if !strings.HasPrefix(line, want) {
				t.Errorf("doctor's agent check %q, want %s", line, want)
			}
			for _, w := range tt.words {
				if !strings.Contains(line, w) {
					t.Errorf("doctor's agent check %q does not say %q", line, w)
				}
			}
		})
	}

	t.Run("RefusedPlainPeersLeaveNoDescriptor", func(t *testing.T) {
		before := openFDs(t, e.agent.PID())
		const runs = 20
		for i := range runs {
			if _, err := sendGarbage(t, e.lab, uint64(i+1)); err != nil {
				t.Fatalf("plain connection %d: %v", i, err)
			}
		}
		var now int
		if !waitFor(t, "the agent to close the refused connections", 5*time.Second, func() bool {
			now = openFDs(t, e.agent.PID())
			return now <= before
		}) {
			t.Errorf("agent holds %d descriptors after %d refused plain connections, %d before", now, runs, before)
		}
	})

	// The authenticated daemon was never disturbed.
	m := mustMetrics(t, e.copyMetrics)
	if m["tcpshadow_agent_connected"] != 1 || m["tcpshadow_agent_connects_total"] != 1 {
		t.Errorf("copy daemon: connected %v, connects_total %v; want one TLS connection, kept",
			m["tcpshadow_agent_connected"], m["tcpshadow_agent_connects_total"])
	}
	keepAlive(t, e.lab, prodV4.String(), "/tls-after", 5, 20)
	e.checkCopied(t, "/tls-after/", 100)
}
