package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/intercept"
	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/internal/lab"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// The control channel and the metrics listener under attack: each test
// plays someone hostile on the lab's network (from the shadow, which is
// on the assist host's segment) while a copy daemon copies.

// openIdle opens n connections from ns to addr, all from one thread in
// the namespace, and closes them when the test ends. Dial errors (a
// listener shedding them) are counted, not fatal.
func openIdle(t *testing.T, ns *lab.NS, addr string, n int) (conns []net.Conn, failed int) {
	t.Helper()
	err := ns.Do(func() error {
		d := net.Dialer{Timeout: 2 * time.Second}
		for range n {
			c, err := d.Dial("tcp", addr)
			if err != nil {
				failed++
				continue
			}
			conns = append(conns, c)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	return conns, failed
}

// procStatus reads a field of /proc/PID/status, such as VmRSS (in kB).
func procStatus(t *testing.T, pid int, field string) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.Atoi(strings.Fields(v)[0])
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// TestHostileHugeHellos: 1000 connections each announce a hello of a
// megabyte, send a quarter of it and stall. The agent refuses each from
// its length prefix, so its heap stays small, and the copy daemon keeps
// its channel and copies in full meanwhile.
func TestHostileHugeHellos(t *testing.T) {
	e := newEnv(t, envOptions{})
	stop := e.watchConnected(100 * time.Millisecond)
	base := mustMetrics(t, e.agentMetrics)
	agentAddr := net.JoinHostPort(lab.AssistV4.String(), agentPort)
	const attackers = 1000
	payload := append([]byte{0x00, 0x10, 0x00, 0x00, byte(wire.TypeHello)}, make([]byte, 256<<10)...)
	var peakHeap, peakRSS atomic.Int64
	sample := func() {
		if m, err := e.agentMetrics(); err == nil {
			peakHeap.Store(max(peakHeap.Load(), int64(m["go_memstats_heap_inuse_bytes"])))
		}
		peakRSS.Store(max(peakRSS.Load(), int64(procStatus(t, e.agent.PID(), "VmRSS"))))
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for ctx.Err() == nil {
			sample()
			time.Sleep(50 * time.Millisecond)
		}
	})
	conns, failed := openIdle(t, e.lab.Shadow, agentAddr, attackers)
	var written atomic.Int64
	var ww sync.WaitGroup
	for _, c := range conns {
		ww.Go(func() {
			_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			n, _ := c.Write(payload) // the agent hangs up early: a short write
			written.Add(int64(n))
		})
	}
	keepAlive(t, e.lab, prodV4.String(), "/hello-flood", 5, 20)
	ww.Wait()
	time.Sleep(time.Second) // what is in flight reaches the agent
	cancel()
	wg.Wait()
	sample()
	m := mustMetrics(t, e.agentMetrics)
	refused := m["tcpshadow_intercept_peers_refused_total"] - base["tcpshadow_intercept_peers_refused_total"] +
		m["tcpshadow_intercept_conns_shed_total"] - base["tcpshadow_intercept_conns_shed_total"]
	t.Logf("%d connections (%d failed to connect), %d MiB written; agent refused or shed %v; peak heap in use %d KiB, peak RSS %d KiB",
		len(conns), failed, written.Load()>>20, refused, peakHeap.Load()>>10, peakRSS.Load())
	if refused < float64(len(conns))*0.9 {
		t.Errorf("agent refused or shed %v of %d connections", refused, len(conns))
	}
	const heapBound = 64 << 20
	if peakHeap.Load() == 0 || peakHeap.Load() > heapBound {
		t.Errorf("agent heap in use peaked at %d KiB, want at most %d KiB", peakHeap.Load()>>10, heapBound>>10)
	}
	e.checkCopied(t, "/hello-flood/", 100)
	if samples, down := stop(); down > 0 {
		t.Errorf("the copy daemon's channel was down in %d of %d samples", down, samples)
	}
	if m := mustMetrics(t, e.copyMetrics); m["tcpshadow_agent_connects_total"] != 1 {
		t.Errorf("the copy daemon reconnected: connects %v", m["tcpshadow_agent_connects_total"])
	}
}

// TestHostileDescriptorExhaustion runs the agent with 256 descriptors and
// its per-address and handshake caps raised out of the way, and opens 300
// idle connections: accepts fail with EMFILE, the agent pauses them, keeps
// serving the copy daemon it has, and takes new ones once the idle
// connections' handshakes time out.
func TestHostileDescriptorExhaustion(t *testing.T) {
	if _, err := exec.LookPath("prlimit"); err != nil {
		t.Skipf("prlimit not installed (util-linux): %v", err)
	}
	e := newEnv(t, envOptions{
		agentArgs: []string{"--max-handshakes", "1000", "--max-conns-per-addr", "1000"},
		prefix: func(sub string) []string {
			if sub == "intercept" {
				return []string{"prlimit", "--nofile=256:256", "--"}
			}
			return nil
		},
	})
	if got := procLimit(t, e.agent.PID(), "Max open files"); got != "256" {
		t.Fatalf("agent's open files limit %q, want 256", got)
	}
	stop := e.watchConnected(100 * time.Millisecond)
	agentAddr := net.JoinHostPort(lab.AssistV4.String(), agentPort)
	conns, failed := openIdle(t, e.lab.Shadow, agentAddr, 300)
	t.Logf("%d idle connections open (%d failed); agent holds %d descriptors", len(conns), failed, openFDs(t, e.agent.PID()))
	keepAlive(t, e.lab, prodV4.String(), "/emfile", 5, 20)
	var m map[string]float64
	e.waitFor("the agent to meet EMFILE", 10*time.Second, func() bool {
		var err error
		m, err = e.agentMetrics()
		return err == nil && m["tcpshadow_intercept_accept_errors_total"] > 0
	})
	if e.agent.Exited() {
		t.Fatalf("the agent exited: %v\n%s", e.agent.Wait(), e.agent.Output())
	}
	e.checkCopied(t, "/emfile/", 100)
	if samples, down := stop(); down > 0 {
		t.Errorf("the copy daemon's channel was down in %d of %d samples", down, samples)
	}
	// The idle ones time out; a new copy daemon (doctor's probe) gets in.
	prod := []string{"--role", "prod", "--iface", lab.ProdClientLink, "--intercept", lab.AssistV4.String(), "--secret-file", e.secret}
	if !waitFor(t, "a new connection to be served", 30*time.Second, func() bool {
		d := runDoctor(t, e.lab.Prod, prod...)
		return strings.HasPrefix(d.line("agent "+agentAddr), "ok")
	}) {
		t.Errorf("agent output:\n%s", e.agent.Output())
	}
	t.Logf("agent: accept errors %v, refused %v; %d descriptors now", m["tcpshadow_intercept_accept_errors_total"],
		m["tcpshadow_intercept_peers_refused_total"], openFDs(t, e.agent.PID()))
}

// procLimit reads the soft limit of a line of /proc/PID/limits.
func procLimit(t *testing.T, pid int, name string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, name); ok {
			return strings.Fields(rest)[0]
		}
	}
	return ""
}

// TestHostileStrangerAsksForSSH: an agent started as documented (with a
// secret, default filter) serves a copy daemon while the assist host has
// an SSH session. A stranger without the secret is refused; a peer with
// the secret that announces the whole address space still cannot register
// the SSH session's flow, nor the control channel's, and gets none of
// their headers. An agent without a secret does not start.
func TestHostileStrangerAsksForSSH(t *testing.T) {
	e := newEnv(t, envOptions{noAgentFilter: true})
	sshAddr := netip.AddrPortFrom(lab.AssistV4, 22)
	ln, err := e.lab.Assist.Listen("tcp", sshAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	ssh, err := e.lab.Shadow.DialContext(ctx, "tcp", sshAddr.String())
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	defer ssh.Close()
	client := netip.MustParseAddrPort(ssh.LocalAddr().String())
	// The session's flow as a copier would register it: the agent's end is
	// the "forged client", the client the "shadow".
	sshFlow := rewrite.TupleOf(sshAddr, client)
	everything := []wire.Pool{{Prefix: netip.MustParsePrefix("0.0.0.0/0"), Slots: 1}, {Prefix: netip.MustParsePrefix("::/0"), Slots: 1}}
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		return e.lab.Prod.DialContext(ctx, "tcp", addr)
	}
	agentAddr := net.JoinHostPort(lab.AssistV4.String(), agentPort)
	probe := func(secret []byte) (*intercept.ProbeConn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return intercept.DialProbe(ctx, intercept.ProbeConfig{Addr: agentAddr, Name: "stranger", Secret: secret, Pools: everything, Dial: dial})
	}
	base := mustMetrics(t, e.agentMetrics)

	t.Run("NoSecret", func(t *testing.T) {
		p, err := probe(nil)
		var pe *wire.PeerError
		if err == nil {
			p.Close()
			t.Fatal("a stranger without the secret was accepted")
		}
		if !errors.As(err, &pe) || pe.Code != wire.CodeAuth {
			t.Fatalf("stranger: %v, want an authentication refusal", err)
		}
	})

	t.Run("WithSecret", func(t *testing.T) {
		secret, err := os.ReadFile(e.secret)
		if err != nil {
			t.Fatal(err)
		}
		p, err := probe([]byte(strings.TrimSpace(string(secret))))
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		control := rewrite.TupleOf(netip.MustParseAddrPort(agentAddr), netip.AddrPortFrom(lab.ProdV4, 40000))
		deadline := time.Now().Add(5 * time.Second)
		for _, f := range []rewrite.Tuple{sshFlow, control} {
			if err := p.Register(f, deadline); err != nil {
				t.Fatal(err)
			}
		}
		for i := range 20 { // the session goes on: its packets pass the agent's capture
			fmt.Fprintf(ssh, "keystroke %d\n", i)
			_, _ = ssh.Read(make([]byte, 64))
		}
		if hdr, err := p.NextReply(time.Now().Add(2 * time.Second)); err == nil {
			t.Fatalf("the stranger received a header: %x", hdr)
		}
		m := mustMetrics(t, e.agentMetrics)
		if got := m["tcpshadow_intercept_flows_local_total"] - base["tcpshadow_intercept_flows_local_total"]; got != 2 {
			t.Errorf("flows_local rose by %v, want the 2 registrations refused", got)
		}
	})

	t.Run("AgentWithoutSecret", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := e.lab.Assist.Run(ctx, binPath, "intercept", "--iface", lab.HostLink,
			"--listen", net.JoinHostPort(lab.AssistV4.String(), "36600"))
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "--secret-file is required") ||
			!strings.Contains(string(out), "--insecure-no-auth") {
			t.Fatalf("an agent without a secret: %v\n%s", err, out)
		}
	})

	keepAlive(t, e.lab, prodV4.String(), "/stranger", 5, 20)
	e.checkCopied(t, "/stranger/", 100)
	if m := mustMetrics(t, e.agentMetrics); m["tcpshadow_intercept_outside_pools_total"] == 0 {
		t.Errorf("the SSH session's packets were not counted outside the pools")
	}
}

// frameProxy relays the control channel frame by frame, and writes an
// injected frame into either direction when asked.
type frameProxy struct {
	ln                net.Listener
	toCopier, toAgent chan []byte
}

func startFrameProxy(t *testing.T, l *lab.Lab, listen, agent string) *frameProxy {
	t.Helper()
	ln, err := l.Prod.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	p := &frameProxy{ln: ln, toCopier: make(chan []byte, 4), toAgent: make(chan []byte, 4)}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			a, err := l.Prod.DialContext(ctx, "tcp", agent)
			cancel()
			if err != nil {
				c.Close()
				continue
			}
			t.Cleanup(func() { c.Close(); a.Close() })
			go relayFrames(a, c, p.toCopier)
			go relayFrames(c, a, p.toAgent)
		}
	}()
	return p
}

// relayFrames copies frames from src to dst, whole, writing what inject
// brings between two of them.
func relayFrames(src, dst net.Conn, inject <-chan []byte) {
	defer dst.Close()
	r := wire.NewReader(src)
	for {
		typ, p, err := r.Next()
		if err != nil {
			return
		}
		frame := append([]byte{0, 0, 0, 0, byte(typ)}, p...)
		frame[0], frame[1], frame[2], frame[3] = byte((len(p)+1)>>24), byte((len(p)+1)>>16), byte((len(p)+1)>>8), byte(len(p)+1)
		select {
		case extra := <-inject:
			frame = append(extra, frame...)
		default:
		}
		if _, err := dst.Write(frame); err != nil {
			return
		}
	}
}

// TestHostileInjectedFrames puts a proxy on the plain control channel, on
// the path between the copy daemon and the agent, that injects a reply
// frame toward the copier and a registration toward the agent after the
// handshake: both are dropped and counted, the session survives, and
// copying is complete.
func TestHostileInjectedFrames(t *testing.T) {
	proxyAddr := net.JoinHostPort(lab.ProdV4.String(), "36600")
	agentAddr := net.JoinHostPort(lab.AssistV4.String(), agentPort)
	e := newEnv(t, envOptions{lateCopier: true, copyArgs: []string{"--intercept", proxyAddr}})
	proxy := startFrameProxy(t, e.lab, proxyAddr, agentAddr)
	e.startCopier()
	keepAlive(t, e.lab, prodV4.String(), "/before-injection", 2, 10)

	var rb wire.ReplyBatch
	rb.Reset()
	seg := rewrite.Segment{Src: netip.AddrPortFrom(lab.ShadowV4, 80), Dst: netip.MustParseAddrPort("198.19.7.7:40000"),
		Seq: 1, Ack: 1, Flags: rewrite.FlagRST | rewrite.FlagACK}
	hdr := make([]byte, seg.Len())
	if _, err := seg.Put(hdr); err != nil {
		t.Fatal(err)
	}
	rb.Add(time.Now().UnixNano(), hdr)
	proxy.toCopier <- append([]byte(nil), rb.Frame()...)
	proxy.toAgent <- wire.AppendFlows(nil, wire.TypeRegister, []rewrite.Tuple{rewrite.TupleOf(
		netip.MustParseAddrPort("198.19.7.7:40000"), netip.AddrPortFrom(lab.ShadowV4, 80))})

	keepAlive(t, e.lab, prodV4.String(), "/after-injection", 5, 20)
	e.waitFor("both injected frames dropped and counted", 10*time.Second, func() bool {
		c, err1 := e.copyMetrics()
		a, err2 := e.agentMetrics()
		return err1 == nil && err2 == nil && c["tcpshadow_agent_bad_frames_total"] >= 1 && a["tcpshadow_intercept_bad_frames_total"] >= 1
	})
	e.checkCopied(t, "/before-injection/", 20)
	e.checkCopied(t, "/after-injection/", 100)
	c := mustMetrics(t, e.copyMetrics)
	if c["tcpshadow_agent_connects_total"] != 1 || c["tcpshadow_agent_connected"] != 1 {
		t.Errorf("the session did not survive: connects %v, connected %v", c["tcpshadow_agent_connects_total"], c["tcpshadow_agent_connected"])
	}
	if a := mustMetrics(t, e.agentMetrics); a["tcpshadow_intercept_flows_outside_pool_total"] != 0 {
		t.Errorf("the injected registration reached the relay")
	}
	e.drained(t, 30*time.Second)
}

// dialFromPort connects from ns to addr with local port port on every
// socket (SO_REUSEADDR), so that two connections to different services
// share it.
func dialFromPort(t *testing.T, ns *lab.NS, local netip.AddrPort, addrs ...string) []net.Conn {
	t.Helper()
	var conns []net.Conn
	err := ns.Do(func() error {
		d := net.Dialer{
			Timeout:   5 * time.Second,
			LocalAddr: net.TCPAddrFromAddrPort(local),
			Control: func(_, _ string, c syscall.RawConn) error {
				var serr error
				if err := c.Control(func(fd uintptr) {
					serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
				}); err != nil {
					return err
				}
				return serr
			},
		}
		for _, a := range addrs {
			c, err := d.Dial("tcp", a)
			if err != nil {
				return err
			}
			conns = append(conns, c)
		}
		return nil
	})
	if err != nil {
		for _, c := range conns {
			c.Close()
		}
		t.Fatal(err)
	}
	return conns
}

// get sends GET path on c and reads the response.
func get(t *testing.T, c net.Conn, host, path string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, host); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

// TestHostileTwoCopiersSharePool runs two copy daemons on prod that copy
// two services to one shadow service from one client pool, each in its
// own pool slot, while a client talks to both services from the same
// source port at once: both copies complete, and the agent saw no daemon
// claim the other's flow.
func TestHostileTwoCopiersSharePool(t *testing.T) {
	mapA := fmt.Sprintf("%s:80-%s:80", lab.ProdClientSideV4, lab.ShadowV4)
	mapB := fmt.Sprintf("%s:8080-%s:80", lab.ProdClientSideV4, lab.ShadowV4)
	e := newEnv(t, envOptions{maps: []string{mapA}, copyArgs: []string{"--pool-slot", "0/2", "--name", "prod-a"}})
	prodB := startServer(t, e.lab.Prod, netip.AddrPortFrom(lab.ProdClientSideV4, 8080).String())
	metricsB := net.JoinHostPort(lab.ProdClientSideV4.String(), "9465")
	b, err := e.lab.Prod.Start(context.Background(), binPath, "copy", "--iface", lab.ProdClientLink, "--map", mapB,
		"--intercept", lab.AssistV4.String(), "--client-pool", lab.PoolV4.String(), "--client-pool", lab.PoolV6.String(),
		"--pool-slot", "1/2", "--name", "prod-b", "--secret-file", e.secret, "--metrics", metricsB,
		"--stats-interval", "0", "--linger", "1s", "--idle-timeout", "10s", "--workers", "2")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("second copy daemon:\n%s", b.Output())
		}
		_ = b.Stop(5 * time.Second)
	})
	e.waitFor("the second copy daemon connected", 10*time.Second, func() bool {
		m, err := scrape(e.lab.Prod, metricsB)
		return err == nil && m["tcpshadow_agent_connected"] == 1
	})
	const n = 30
	for i := range n {
		local := netip.AddrPortFrom(lab.ClientV4, uint16(41000+i))
		cs := dialFromPort(t, e.lab.Client, local,
			netip.AddrPortFrom(lab.ProdClientSideV4, 80).String(), netip.AddrPortFrom(lab.ProdClientSideV4, 8080).String())
		get(t, cs[0], "a", fmt.Sprintf("/a/%d", i))
		get(t, cs[1], "b", fmt.Sprintf("/b/%d", i))
		cs[0].Close()
		cs[1].Close()
	}
	if got := len(prodB.requests("/b/")); got != n {
		t.Fatalf("prod's second service served %d requests, want %d", got, n)
	}
	e.checkCopied(t, "/a/", n)
	if !waitFor(t, fmt.Sprintf("the shadow to receive %d /b/ requests", n), 60*time.Second, func() bool {
		return len(e.shadow.requests("/b/")) >= n
	}) {
		e.dumpMetrics(t)
	}
	if got := len(e.shadow.requests("/b/")); got != n {
		t.Errorf("shadow received %d /b/ requests, want %d", got, n)
	}
	a := mustMetrics(t, e.agentMetrics)
	if a["tcpshadow_intercept_flows_conflict_total"] != 0 || a["tcpshadow_intercept_peers"] != 2 {
		t.Errorf("agent: %v conflicts, %v peers; want none and 2", a["tcpshadow_intercept_flows_conflict_total"], a["tcpshadow_intercept_peers"])
	}
	if strings.Contains(e.agent.Output(), "overlapping client pools") {
		t.Errorf("the agent warned of overlapping pools for two slots:\n%s", e.agent.Output())
	}
}

// TestHostileMetricsListener: 2,000 idle connections to an agent's
// metrics on a non-loopback address hold no more than its connection
// limit, and are closed; scraping works again; the profiler is not served
// there (a long trace is refused), and asking for it on such an address
// stops the agent before it starts.
func TestHostileMetricsListener(t *testing.T) {
	e := newEnv(t, envOptions{})
	metricsAddr := net.JoinHostPort(lab.AssistV4.String(), metricsPort)
	before := openFDs(t, e.agent.PID())
	var peak atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for ctx.Err() == nil {
			peak.Store(max(peak.Load(), int64(openFDs(t, e.agent.PID()))))
			time.Sleep(20 * time.Millisecond)
		}
	})
	conns, failed := openIdle(t, e.lab.Shadow, metricsAddr, 2000)
	time.Sleep(time.Second)
	cancel()
	wg.Wait()
	t.Logf("%d idle metrics connections (%d failed); agent descriptors %d before, peak %d", len(conns), failed, before, peak.Load())
	if limit := before + 64 + 32; peak.Load() > int64(limit) {
		t.Errorf("agent held %d descriptors under 2000 idle metrics connections, want at most %d", peak.Load(), limit)
	}
	// The idle ones are closed by the server's header timeout.
	if !waitFor(t, "scraping to work again", 30*time.Second, func() bool {
		_, err := e.agentMetrics()
		return err == nil
	}) {
		t.FailNow()
	}
	c := e.lab.Prod.HTTPClient(1)
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://" + metricsAddr + "/debug/pprof/trace?seconds=600")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("a long trace on the non-loopback metrics address: %s, want 404", resp.Status)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel2()
	out, err := e.lab.Assist.Run(ctx2, binPath, "intercept", "--iface", lab.HostLink, "--secret-file", e.secret,
		"--listen", net.JoinHostPort(lab.AssistV4.String(), "36600"), "--metrics", net.JoinHostPort(lab.AssistV4.String(), "9465"), "--debug-pprof")
	if err == nil || !strings.Contains(string(out), "--debug-pprof") || !strings.Contains(string(out), "loopback") {
		t.Errorf("--debug-pprof with a non-loopback --metrics: %v\n%s", err, out)
	}
}
