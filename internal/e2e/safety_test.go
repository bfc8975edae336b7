package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

// The safety tests check that production never notices the copier while
// the copier's surroundings fail: the shadow goes silent, the agent dies,
// the traffic needs far more memory than the copier may use. Prod's clients
// must see no error at all, the copier must stay within its bounds and
// copy again once the failure is over. Recovery times are logged, not
// asserted: timing belongs in benchmarks, so the bounds here only catch a
// copier that never recovers.

const (
	safetyConns    = 20                    // keep-alive connections of the load
	safetyInterval = 10 * time.Millisecond // per connection: 20 × 100 = 2000 requests/s
	safetyLoadMax  = 50 * time.Second      // hard bound on any load's life
	recoverBound   = 15 * time.Second      // copying must resume within this (a hang guard)
	requestTimeout = 5 * time.Second       // each request of the load
)

var prodV4 = netip.AddrPortFrom(lab.ProdClientSideV4, 80)

// pacedLoad is paced keep-alive HTTP load from the client namespace to
// prod: each connection sends GET prefix/<conn>/<i> at start + i×interval
// (a late request goes at once, none is skipped) until stop or its time
// bound. Every answer is checked against prod's response for the path. An
// error closes the connection; the next request dials a new one.
type pacedLoad struct {
	sent, ok, errs, dials atomic.Int64

	mu       sync.Mutex // guards firstErr
	firstErr []string

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func startPacedLoad(t *testing.T, ns *lab.NS, target netip.AddrPort, prefix string, conns int, interval time.Duration) *pacedLoad {
	ctx, cancel := context.WithTimeout(context.Background(), safetyLoadMax)
	p := &pacedLoad{cancel: cancel}
	for c := range conns {
		p.wg.Go(func() { p.worker(ctx, ns, target, prefix, c, interval) })
	}
	t.Cleanup(p.stop)
	return p
}

// stop ends the load and waits for its workers; it is idempotent.
func (p *pacedLoad) stop() {
	p.cancel()
	p.wg.Wait()
}

func (p *pacedLoad) fail(err error) {
	p.errs.Add(1)
	p.mu.Lock()
	if len(p.firstErr) < 5 {
		p.firstErr = append(p.firstErr, err.Error())
	}
	p.mu.Unlock()
}

// check fails the test unless every request sent was answered correctly
// and prod served exactly those under prefix.
func (p *pacedLoad) check(t *testing.T, e *env, prefix string) {
	t.Helper()
	sent, ok, errs := p.sent.Load(), p.ok.Load(), p.errs.Load()
	t.Logf("load %s: %d requests sent, %d answered correctly, %d errors, %d connections dialled", prefix, sent, ok, errs, p.dials.Load())
	if errs != 0 || ok != sent {
		p.mu.Lock()
		t.Errorf("prod's clients saw %d errors (%d of %d answered), first: %q", errs, ok, sent, p.firstErr)
		p.mu.Unlock()
	}
	if got := len(e.prod.requests(prefix)); int64(got) != ok {
		t.Errorf("prod served %d %s requests, its clients got %d answers", got, prefix, ok)
	}
}

func (p *pacedLoad) worker(ctx context.Context, ns *lab.NS, target netip.AddrPort, prefix string, c int, interval time.Duration) {
	var conn net.Conn
	var br *bufio.Reader
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	timer := time.NewTimer(0)
	defer timer.Stop()
	start := time.Now()
	for i := 0; ; i++ {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			timer.Reset(d)
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			}
		} else if ctx.Err() != nil {
			return
		}
		if conn == nil {
			dctx, cancel := context.WithTimeout(ctx, requestTimeout)
			nc, err := ns.DialContext(dctx, "tcp", target.String())
			cancel()
			if ctx.Err() != nil {
				if nc != nil {
					nc.Close()
				}
				return
			}
			p.dials.Add(1)
			if err != nil {
				p.sent.Add(1)
				p.fail(err)
				continue
			}
			conn, br = nc, bufio.NewReader(nc)
		}
		path := fmt.Sprintf("%s/%d/%d", prefix, c, i)
		p.sent.Add(1)
		if err := roundTrip(conn, br, target, path, false); err != nil {
			p.fail(err)
			conn.Close()
			conn = nil
			continue
		}
		p.ok.Add(1)
	}
}

// roundTrip sends GET path on conn and checks the answer is prod's for
// path: 200, the expected body, and the connection kept unless closeAfter.
func roundTrip(conn net.Conn, br *bufio.Reader, target netip.AddrPort, path string, closeAfter bool) error {
	if err := conn.SetDeadline(time.Now().Add(requestTimeout)); err != nil {
		return err
	}
	hdr := ""
	if closeAfter {
		hdr = "Connection: close\r\n"
	}
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n", path, target, hdr); err != nil {
		return fmt.Errorf("%s: write: %w", path, err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return fmt.Errorf("%s: read response: %w", path, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	switch {
	case err != nil:
		return fmt.Errorf("%s: read body: %w", path, err)
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("%s: status %d", path, resp.StatusCode)
	case !bytes.Equal(body, responseFor(path)):
		return fmt.Errorf("%s: body of %d bytes is not prod's", path, len(body))
	case resp.Close && !closeAfter:
		return fmt.Errorf("%s: prod closed the keep-alive connection", path)
	}
	return nil
}

// getNewConn sends GET path to target on a new connection from ns, closed
// after the answer.
func getNewConn(ns *lab.NS, target netip.AddrPort, path string) error {
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	c, err := ns.DialContext(ctx, "tcp", target.String())
	if err != nil {
		return err
	}
	defer c.Close()
	return roundTrip(c, bufio.NewReader(c), target, path, true)
}

// newConns sends n requests prefix/<i>, one new connection each, a few in
// parallel, and fails the test on any error.
func newConns(t *testing.T, ns *lab.NS, target netip.AddrPort, prefix string, n int) {
	t.Helper()
	const parallel = 5
	var wg sync.WaitGroup
	var errs atomic.Int64
	for w := range parallel {
		wg.Go(func() {
			for i := w; i < n; i += parallel {
				if err := getNewConn(ns, target, fmt.Sprintf("%s/%d", prefix, i)); err != nil {
					if errs.Add(1) <= 5 {
						t.Errorf("prod's client: %v", err)
					}
				}
			}
		})
	}
	wg.Wait()
	if n := errs.Load(); n > 0 {
		t.Fatalf("prod's clients saw %d errors on new connections", n)
	}
}

// firstSeen records when the shadow first served a path of each top-level
// prefix ("/resume/" for "/resume/3").
type firstSeen struct {
	mu sync.Mutex
	at map[string]time.Time
}

func newFirstSeen() *firstSeen { return &firstSeen{at: make(map[string]time.Time)} }

func (f *firstSeen) wrap(side string, h http.Handler) http.Handler {
	if side != "shadow" {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if first, _, ok := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/"); ok {
			now := time.Now()
			f.mu.Lock()
			if _, seen := f.at["/"+first+"/"]; !seen {
				f.at["/"+first+"/"] = now
			}
			f.mu.Unlock()
		}
		h.ServeHTTP(w, r)
	})
}

func (f *firstSeen) get(prefix string) (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	at, ok := f.at[prefix]
	return at, ok
}

// probeResume opens a new connection to prod every 100 ms, one request
// prefix/<n> each, until the shadow has served one of them or
// recoverBound passes. It returns how long after since the shadow first
// served one, and fails the test if none arrived or prod's client saw an
// error.
func probeResume(t *testing.T, e *env, seen *firstSeen, prefix string, since time.Time) time.Duration {
	t.Helper()
	deadline := since.Add(recoverBound)
	n := 0
	for time.Now().Before(deadline) {
		if at, ok := seen.get(prefix); ok {
			d := at.Sub(since)
			t.Logf("first new connection's request reached the shadow %v after the recovery (%d probes sent)", d.Round(time.Millisecond), n)
			return d
		}
		if err := getNewConn(e.lab.Client, prodV4, fmt.Sprintf("%s%d", prefix, n)); err != nil {
			t.Errorf("prod's client: %v", err)
		}
		n++
		time.Sleep(100 * time.Millisecond)
	}
	e.dumpMetrics(t)
	t.Fatalf("no request on a new connection reached the shadow within %v of the recovery (%d probes)", recoverBound, n)
	return 0
}

// vmRSS returns a process's resident set size from /proc/PID/status.
func vmRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("VmRSS %q: %w", rest, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("pid %d: no VmRSS", pid)
}

// memSample is one reading of the copy daemon's memory.
type memSample struct {
	at            time.Time
	rss, buffered int64
	err           error // the daemon did not answer
}

// memMonitor samples the copy daemon's RSS and buffered-bytes gauge every
// interval until the test ends.
type memMonitor struct {
	mu      sync.Mutex
	samples []memSample
}

func (e *env) monitorMemory(t *testing.T, interval time.Duration) *memMonitor {
	m := &memMonitor{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	pid := e.copier.PID()
	go func() {
		defer close(done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			s := memSample{at: time.Now()}
			s.rss, s.err = vmRSS(pid)
			if s.err == nil {
				var cm map[string]float64
				if cm, s.err = e.copyMetrics(); s.err == nil {
					s.buffered = int64(cm["tcpshadow_copy_buffered_bytes"])
				}
			}
			m.mu.Lock()
			m.samples = append(m.samples, s)
			m.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return m
}

// peaks returns the largest RSS and buffered bytes sampled in [from, to],
// how many samples that covers and how many failed.
func (m *memMonitor) peaks(from, to time.Time) (rss, buffered int64, n, failed int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range m.samples {
		if s.at.Before(from) || s.at.After(to) {
			continue
		}
		n++
		if s.err != nil {
			failed++
			continue
		}
		rss, buffered = max(rss, s.rss), max(buffered, s.buffered)
	}
	return rss, buffered, n, failed
}

// silenceTable names the nftables table silenceShadow creates.
const silenceTable = "e2e_silence"

// silenceShadow cuts the shadow off the network: the switch drops every
// frame from and to the shadow's port (netdev ingress and egress of its
// veth in the switch namespace), ARP included, as a pulled cable would.
// The shadow host itself is left alone. The two ways the issue offers both
// change the shadow's own TCP: `ip link set eth0 down` deletes the routes
// through the link (the pool's route via the assist host) and, with
// keep_addr_on_down=0, the IPv6 addresses, which restoring would have to
// redo; an nftables drop inside the shadow discards the shadow's own
// packets locally, which its TCP takes for local congestion: it probes
// every 500 ms without backoff and aborts a connection after
// tcp_retries2 (15) failed probes, about 8 s, so the copier met resets of
// the shadow's making after the silence. Here the shadow's TCP sees only
// silence. It returns restore, which removes the rules and returns how many
// frames they dropped; a cleanup restores too.
func silenceShadow(t *testing.T, l *lab.Lab) (restore func() int) {
	t.Helper()
	port := "p-" + lab.RoleShadow // the shadow's port on the bridge
	rules := fmt.Sprintf(`table netdev %[1]s {
	chain from_shadow {
		type filter hook ingress device %[2]s priority -500; policy accept;
		counter drop
	}
	chain to_shadow {
		type filter hook egress device %[2]s priority -500; policy accept;
		counter drop
	}
}
`, silenceTable, port)
	cmd := l.Switch.Command(context.Background(), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: silence the shadow: %v: %s", err, out)
	}
	var once sync.Once
	dropped := 0
	restore = func() int {
		once.Do(func() {
			out, err := l.Switch.Run(context.Background(), "nft", "list", "table", "netdev", silenceTable)
			if err != nil {
				t.Error(err)
			}
			dropped = nftPackets(string(out))
			if _, err := l.Switch.Run(context.Background(), "nft", "delete", "table", "netdev", silenceTable); err != nil {
				t.Errorf("restore the shadow: %v", err)
			}
		})
		return dropped
	}
	t.Cleanup(func() { restore() })
	return restore
}

// waitCopying waits until the shadow has served n requests under prefix:
// the copier is copying the load.
func waitCopying(t *testing.T, e *env, prefix string, n int) {
	t.Helper()
	if !waitFor(t, fmt.Sprintf("the shadow to serve %d %s requests", n, prefix), 20*time.Second, func() bool {
		return len(e.shadow.requests(prefix)) >= n
	}) {
		e.dumpMetrics(t)
		t.FailNow()
	}
}

// logCopied logs how much of prefix's traffic reached the shadow.
func logCopied(t *testing.T, e *env, prefix string) {
	t.Logf("%s: prod served %d requests, the shadow %d", prefix, len(e.prod.requests(prefix)), len(e.shadow.requests(prefix)))
}

const mib = 1 << 20

// TestSafetyShadowSilent cuts the shadow off for 10 s under 2000
// requests/s of keep-alive HTTP: prod's clients see no error, the copy
// daemon stays within --max-memory (RSS) and its buffer budget (half of
// it) while it holds what the shadow does not take, and once the shadow
// is back, requests on new connections reach it again, and the sessions
// that lived through the silence are copied whole, each request once
// (scenarios 7, 13, 27: pacing, retransmission, bounded buffers).
func TestSafetyShadowSilent(t *testing.T) {
	const maxMemory = 256 * mib
	seen := newFirstSeen()
	e := newEnv(t, envOptions{copyArgs: []string{"--max-memory", "256MiB"}, wrap: seen.wrap})
	e.explainFailures(t)
	mem := e.monitorMemory(t, 100*time.Millisecond)
	load := startPacedLoad(t, e.lab.Client, prodV4, "/ka", safetyConns, safetyInterval)
	waitCopying(t, e, "/ka/", 1000)

	silentAt := time.Now()
	restore := silenceShadow(t, e.lab)
	// The shadow's count must stop moving: what was in flight lands
	// within a moment, nothing after.
	time.Sleep(time.Second)
	servedEarly := len(e.shadow.requests("/ka/"))
	time.Sleep(9 * time.Second)
	servedLate := len(e.shadow.requests("/ka/"))
	dropped := restore()
	backAt := time.Now()
	t.Logf("shadow silent %v: %d frames dropped at its switch port", backAt.Sub(silentAt).Round(time.Millisecond), dropped)
	if servedLate != servedEarly || dropped == 0 {
		t.Errorf("the shadow was not silent: it served %d requests during the silence, %d frames dropped", servedLate-servedEarly, dropped)
	}

	probeResume(t, e, seen, "/resume/", backAt)
	time.Sleep(3 * time.Second) // the load goes on through the recovery
	load.stop()
	load.check(t, e, "/ka/")
	logCopied(t, e, "/ka/")

	rss, buffered, n, failed := mem.peaks(silentAt, backAt)
	t.Logf("during the silence (%d samples): peak RSS %.1f MiB, peak buffered %.1f MiB (bounds %d MiB and %d MiB)",
		n, float64(rss)/mib, float64(buffered)/mib, maxMemory/mib, maxMemory/2/mib)
	if failed > 0 || n == 0 {
		t.Errorf("%d of %d memory samples during the silence failed", failed, n)
	}
	if rss >= maxMemory {
		t.Errorf("copy daemon's RSS peaked at %d bytes during the silence, over --max-memory %d", rss, maxMemory)
	}
	if buffered > maxMemory/2 {
		t.Errorf("copy daemon buffered %d bytes during the silence, over its budget %d", buffered, maxMemory/2)
	}
	if buffered == 0 {
		t.Errorf("copy daemon buffered nothing while the shadow was silent: the silence was not exercised")
	}
	if allRSS, _, _, _ := mem.peaks(time.Time{}, time.Now()); allRSS >= maxMemory {
		t.Errorf("copy daemon's RSS peaked at %d bytes, over --max-memory %d", allRSS, maxMemory)
	}

	// Every new connection after the recovery is copied, exactly; and
	// the keep-alive sessions that lived through the silence lose nothing
	// and repeat nothing: the copier held their requests and replays them,
	// at prod's pace, once the shadow answers again (scenarios 7, 13).
	newConns(t, e.lab.Client, prodV4, "/after", 100)
	e.checkCopied(t, "/after/", 100)
	e.checkCopied(t, "/resume/", len(e.prod.requests("/resume/")))
	e.checkCopied(t, "/ka/", int(load.ok.Load()))
	e.drained(t, 30*time.Second)
	e.dumpMetrics(t)
}

// TestSafetyAgentRestart kills the intercept agent with SIGKILL under
// 2000 requests/s of keep-alive HTTP and starts a new one: prod's clients
// see no error, the copy daemon notices, reconnects by itself, and
// sessions on new connections are copied again.
func TestSafetyAgentRestart(t *testing.T) {
	seen := newFirstSeen()
	e := newEnv(t, envOptions{wrap: seen.wrap})
	e.explainFailures(t)
	load := startPacedLoad(t, e.lab.Client, prodV4, "/ka", safetyConns, safetyInterval)
	waitCopying(t, e, "/ka/", 1000)
	base, err := e.copyMetrics()
	if err != nil {
		t.Fatal(err)
	}

	old := e.agent
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("killed agent's output:\n%s", old.Output())
		}
	})
	killedAt := time.Now()
	if err := old.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-old.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("%v still running 10s after SIGKILL", old)
	}
	e.waitFor("the copy daemon to notice the agent is gone", 10*time.Second, func() bool {
		m, err := e.copyMetrics()
		return err == nil && m["tcpshadow_agent_connected"] == 0
	})
	t.Logf("copy daemon noticed the agent's death after %v", time.Since(killedAt).Round(time.Millisecond))
	time.Sleep(time.Second) // the agent stays away a while, under load

	e.restartAgent()
	upAt := time.Now()
	var m map[string]float64
	if !waitFor(t, "the copy daemon to reconnect", recoverBound, func() bool {
		m, err = e.copyMetrics()
		return err == nil && m["tcpshadow_agent_connected"] == 1
	}) {
		t.FailNow()
	}
	t.Logf("copy daemon reconnected %v after the new agent listened", time.Since(upAt).Round(time.Millisecond))
	if got, was := m["tcpshadow_agent_connects_total"], base["tcpshadow_agent_connects_total"]; got <= was {
		t.Errorf("tcpshadow_agent_connects_total %v, was %v before the restart", got, was)
	}
	probeResume(t, e, seen, "/resume/", upAt)
	time.Sleep(3 * time.Second) // the load goes on after the recovery
	load.stop()
	load.check(t, e, "/ka/")
	logCopied(t, e, "/ka/")

	if e.copier.Exited() {
		t.Fatalf("copy daemon exited: %v", e.copier.Wait())
	}
	// New sessions are copied exactly, and so are the keep-alive sessions
	// that lived through the restart: the copier replayed their
	// registrations, and the replies lost meanwhile were retransmitted.
	newConns(t, e.lab.Client, prodV4, "/after", 100)
	e.checkCopied(t, "/after/", 100)
	e.checkCopied(t, "/resume/", len(e.prod.requests("/resume/")))
	e.checkCopied(t, "/ka/", int(load.ok.Load()))
	e.drained(t, 30*time.Second)
	e.dumpMetrics(t)
}

// slowShadow makes the shadow's handler wait before reading the body of
// requests under prefix, so its receive window closes and the copy daemon
// must hold the rest of each upload.
func slowShadow(prefix string, wait time.Duration) func(string, http.Handler) http.Handler {
	return func(side string, h http.Handler) http.Handler {
		if side != "shadow" {
			return h
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, prefix) {
				time.Sleep(wait)
			}
			h.ServeHTTP(w, r)
		})
	}
}

// TestSafetyMaxMemoryFarBelowNeed gives the copy daemon the smallest
// memory budget (--max-memory 16MiB: 8 MiB of buffers) and uploads far more
// than that at once to a shadow that reads slowly: the daemon keeps
// running and answering, sheds (counted) instead of growing, prod's
// clients see no error, some uploads still reach the shadow intact, and
// once the overload is over every new session is copied (scenario 27).
func TestSafetyMaxMemoryFarBelowNeed(t *testing.T) {
	const (
		uploads    = 64
		uploadSize = 384 << 10 // 24 MiB in all, three times the buffer budget
		shadowWait = 3 * time.Second
	)
	e := newEnv(t, envOptions{copyArgs: []string{"--max-memory", "16MiB"}, wrap: slowShadow("/mem/", shadowWait)})
	e.explainFailures(t)
	mem := e.monitorMemory(t, 100*time.Millisecond)
	start := time.Now()

	client := e.lab.Client.HTTPClient(uploads)
	client.Transport.(*http.Transport).DisableKeepAlives = true // a session each
	defer client.CloseIdleConnections()
	rng := rand.New(rand.NewPCG(27, 27))
	var wg sync.WaitGroup
	for i := range uploads {
		body := make([]byte, uploadSize)
		for j := range body {
			body[j] = byte(rng.Uint32())
		}
		path := fmt.Sprintf("/mem/%d", i)
		wg.Go(func() { do(t, client, http.MethodPost, "http://"+prodV4.String()+path, body, path) })
	}
	wg.Wait()
	if got := len(e.prod.requests("/mem/")); got != uploads {
		t.Errorf("prod served %d uploads, want %d", got, uploads)
	}

	// Some uploads get through the overload: the shadow, once it reads,
	// receives them whole, identical to prod's.
	if !waitFor(t, "the shadow to receive an upload", 2*shadowWait+recoverBound, func() bool {
		return len(e.shadow.requests("/mem/")) > 0
	}) {
		e.dumpMetrics(t)
		t.FailNow()
	}
	prodSums := make(map[string]string)
	for _, r := range e.prod.requests("/mem/") {
		prodSums[r.path] = r.bodySum
	}
	e.drained(t, 30*time.Second)
	for _, r := range e.shadow.requests("/mem/") {
		if prodSums[r.path] != r.bodySum {
			t.Errorf("shadow received %s with a body differing from prod's", r.path)
		}
	}
	logCopied(t, e, "/mem/")

	m, err := e.copyMetrics()
	if err != nil {
		t.Fatalf("copy daemon's metrics after the overload: %v", err)
	}
	if e.copier.Exited() {
		t.Fatalf("copy daemon exited: %v", e.copier.Wait())
	}
	shedMem, shedSess := m[`tcpshadow_copy_events_total{event="shed_memory"}`], m[`tcpshadow_copy_events_total{event="shed_session_limit"}`]
	t.Logf("shed_memory %v, shed_session_limit %v, sessions cut at the buffer limit %v of %v started",
		shedMem, shedSess, m[`tcpshadow_copy_sessions_ended_total{reason="buffer_limit"}`], m[`tcpshadow_copy_events_total{event="sessions_started"}`])
	if shedMem+shedSess == 0 {
		t.Errorf("no shedding counted: the budget was not exceeded")
	}
	rss, buffered, n, failed := mem.peaks(start, time.Now())
	t.Logf("overload (%d samples): peak RSS %.1f MiB, peak buffered %.1f MiB (buffer budget 8 MiB)", n, float64(rss)/mib, float64(buffered)/mib)
	if failed > 0 {
		t.Errorf("the copy daemon failed to answer %d of %d samples", failed, n)
	}
	if buffered > 8*mib {
		t.Errorf("copy daemon buffered %d bytes, over its budget of 8 MiB", buffered)
	}

	// The overload is over: every new session is copied again.
	newConns(t, e.lab.Client, prodV4, "/after", 100)
	e.checkCopied(t, "/after/", 100)
	e.dumpMetrics(t)
}
