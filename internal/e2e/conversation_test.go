package e2e

// Tests of what the copier learns from prod's side of each conversation
// (scenarios 28-35): multiplexed, pipelined, bulk and server-pushing
// protocols copied whole, with real clients and servers.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/lab"
	"github.com/tcpshadow/tcpshadow/internal/rawsock"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// TestHTTP2Multiplexed: nginx speaking HTTP/2 over cleartext on prod and
// shadow, h2load with 10 connections of 10 concurrent streams each at
// 400 requests/s, three runs: every request prod served reaches the
// shadow, every run (scenario 28). Without prod's side the pacing waited
// for answers to control frames prod never gave, and whole sessions
// stalled.
func TestHTTP2Multiplexed(t *testing.T) {
	if _, err := exec.LookPath("h2load"); err != nil {
		t.Skipf("h2load (nghttp2-client) not installed: %v", err)
	}
	const runs, conns, streams, rpsPerConn = 3, 10, 10, 40
	const runFor = 5 * time.Second
	e := newEnv(t, envOptions{noProdHTTP: true, noShadowHTTP: true})
	e.explainFailures(t)
	prodNgx := startNginxWith(t, e.lab.Prod, netip.AddrPortFrom(lab.ProdClientSideV4, 80), nginxOptions{keepalive: time.Minute, http2: true})
	shadowNgx := startNginxWith(t, e.lab.Shadow, netip.AddrPortFrom(lab.ShadowV4, 80), nginxOptions{keepalive: time.Minute, http2: true})
	for r := 0; r < runs; r++ {
		prefix := fmt.Sprintf("/h2run%d/", r)
		var uris []string
		for i := 0; i < 8; i++ {
			uris = append(uris, fmt.Sprintf("http://%s%s%d", prodV4HTTP, prefix, i))
		}
		ctx, cancel := context.WithTimeout(context.Background(), runFor+20*time.Second)
		args := []string{"-c", fmt.Sprint(conns), "-m", fmt.Sprint(streams), "--rps", fmt.Sprint(rpsPerConn),
			"-D", fmt.Sprint(int(runFor.Seconds())), "--warm-up-time", "0"}
		out, err := e.lab.Client.Run(ctx, "h2load", append(args, uris...)...)
		cancel()
		if err != nil {
			t.Fatalf("run %d: h2load: %v\n%s", r, err, out)
		}
		if !strings.Contains(string(out), "h2") {
			t.Fatalf("run %d: h2load did not speak HTTP/2:\n%s", r, out)
		}
		served := len(prodNgx.accessed(t, prefix))
		if served < runs*conns { // h2load's -D stops mid-second: at least some requests per stream
			t.Fatalf("run %d: prod served %d requests only:\n%s", r, served, out)
		}
		if !waitFor(t, fmt.Sprintf("run %d's %d requests on the shadow", r, served), 20*time.Second, func() bool {
			return len(shadowNgx.accessed(t, prefix)) >= served
		}) {
			t.Errorf("run %d: prod served %d requests, the shadow %d", r, served, len(shadowNgx.accessed(t, prefix)))
		} else {
			t.Logf("run %d: %d requests, all on the shadow", r, served)
		}
	}
	e.drained(t, 30*time.Second)
	e.dumpMetrics(t)
}

// TestHTTP1PipelinedThenReset: 20 connections, each writing 16 requests
// at once and reading the 16 answers, 25 times as fast as it can, then
// writing 16 more and resetting the connection after the first answer:
// every request prod served reaches the shadow, in order per connection,
// each once, though the copy still held requests when the client reset
// (scenarios 29 and 30).
func TestHTTP1PipelinedThenReset(t *testing.T) {
	const conns, rounds, depth = 20, 25, 16
	e := newEnv(t, envOptions{})
	e.explainFailures(t)
	var wg sync.WaitGroup
	for c := 0; c < conns; c++ {
		wg.Go(func() {
			if err := pipelined(e.lab.Client, c, rounds, depth); err != nil {
				t.Errorf("connection %d: %v", c, err)
			}
		})
	}
	wg.Wait()
	prod := e.prod.requests("/pipe/")
	if len(prod) < conns*(rounds*depth+1) {
		t.Fatalf("prod served %d requests, want at least the %d answered", len(prod), conns*(rounds*depth+1))
	}
	// The copier resets the shadow's connection once the shadow has
	// answered as much as prod had: the shadow serves the last batch up
	// to where prod had answered it, give or take the request each was
	// in the middle of when the reset came.
	last := func(rs []request) (earlier []request, final map[string]int) {
		final = map[string]int{}
		for _, r := range rs {
			var c, round, i int
			fmt.Sscanf(r.path, "/pipe/%d/%d/%d", &c, &round, &i)
			if round == rounds {
				final[fmt.Sprint(c)] = max(final[fmt.Sprint(c)], i+1)
			} else {
				earlier = append(earlier, r)
			}
		}
		return earlier, final
	}
	prodEarlier, prodFinal := last(prod)
	e.drained(t, 60*time.Second)
	shadowEarlier, shadowFinal := last(e.shadow.requests("/pipe/"))
	checkSameRequests(t, prodEarlier, shadowEarlier)
	for c, n := range prodFinal {
		if got := shadowFinal[c]; got < n-1 {
			t.Errorf("connection %s: prod served %d requests of the batch before the reset, the shadow %d", c, n, got)
		}
	}
	t.Logf("last batch, requests served before the reset by prod %v, by the shadow %v", prodFinal, shadowFinal)
	e.dumpMetrics(t)
}

// pipelined runs one connection of TestHTTP1PipelinedThenReset.
func pipelined(ns *lab.NS, c, rounds, depth int) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := ns.DialContext(ctx, "tcp", prodV4HTTP)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Minute))
	r := bufio.NewReader(conn)
	batch := func(round int) []byte {
		var b []byte
		for i := 0; i < depth; i++ {
			b = fmt.Appendf(b, "GET /pipe/%d/%d/%d HTTP/1.1\r\nHost: prod\r\n\r\n", c, round, i)
		}
		return b
	}
	for round := 0; round < rounds; round++ {
		if _, err := conn.Write(batch(round)); err != nil {
			return err
		}
		for i := 0; i < depth; i++ {
			resp, err := http.ReadResponse(r, nil)
			if err != nil {
				return fmt.Errorf("round %d, answer %d: %w", round, i, err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	// The last batch, and once prod has answered its first request (so
	// it has received, and acknowledged, the batch) a reset: prod serves
	// what it read by then, while the copy may still hold the batch.
	if _, err := conn.Write(batch(rounds)); err != nil {
		return err
	}
	if resp, err := http.ReadResponse(r, nil); err == nil {
		resp.Body.Close()
	}
	if tc, ok := conn.(interface{ SetLinger(int) error }); ok {
		_ = tc.SetLinger(0)
	}
	return conn.Close()
}

// checkSameRequests checks that shadow saw exactly prod's requests, by
// path, in prod's order per client connection (paths name it).
func checkSameRequests(t testing.TB, prod, shadow []request) {
	t.Helper()
	count := map[string]int{}
	for _, r := range prod {
		count[r.path]++
	}
	for _, r := range shadow {
		count[r.path]--
	}
	bad := 0
	for path, n := range count {
		if n != 0 {
			if bad++; bad <= 10 {
				t.Errorf("%s: prod served it %d more times than the shadow", path, n)
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d paths differ between prod (%d requests) and shadow (%d)", bad, len(prod), len(shadow))
	}
	order := func(rs []request) map[string][]string {
		m := map[string][]string{}
		for _, r := range rs {
			conn := r.path[:strings.LastIndexByte(r.path[:strings.LastIndexByte(r.path, '/')], '/')]
			m[conn] = append(m[conn], r.path)
		}
		return m
	}
	po, so := order(prod), order(shadow)
	for conn, ps := range po {
		if !slices.Equal(ps, so[conn]) {
			t.Errorf("connection %s: the shadow's order differs from prod's", conn)
		}
	}
}

// TestBulkUpload: one connection uploads at 1 Gbit/s for 10 s; the shadow
// receives every byte, identical to prod's (scenario 31). The copy must
// keep the shadow's scaled window full across the relay's round trip, and
// its buffers stay within --max-session-bytes.
func TestBulkUpload(t *testing.T) {
	// The session's buffer may hold a few seconds of the stream: the
	// shadow, sharing two cores with everything else here, lags at times.
	// The worker's own budget (half of --max-memory over two workers) must
	// hold as much.
	const maxSession, maxMemory = "--max-session-bytes=400000000", "--max-memory=2GiB"
	t.Run("OffloadsOn", func(t *testing.T) { bulkUpload(t, lab.Config{}, maxSession, maxMemory) })
	// Without offloads, 1 Gbit/s is 90,000 packets a second each way on
	// this 2-core machine, shared with the client, both servers and the
	// agent: a larger capture ring rides out the scheduler's stalls.
	t.Run("OffloadsOff", func(t *testing.T) {
		bulkUpload(t, lab.Config{DisableOffloads: true}, maxSession, maxMemory, "--capture-buffer-mb=256")
	})
}

func bulkUpload(t *testing.T, lc lab.Config, copyArgs ...string) {
	const rate, dur = 125 << 20, 10 * time.Second // bytes/s: 1 Gbit/s
	e := newEnv(t, envOptions{lab: lc, copyArgs: copyArgs})
	e.explainFailures(t)
	body := &pacedBody{rate: rate, total: int64(rate * dur.Seconds()), seed: 31}
	client := e.lab.Client.HTTPClient(1)
	client.Timeout = 3 * dur
	start := time.Now()
	req, err := http.NewRequest(http.MethodPost, "http://"+prodV4HTTP+"/bulk/0", body)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = body.total
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	took := time.Since(start)
	t.Logf("uploaded %d MiB in %v: %.2f Gbit/s", body.total>>20, took.Round(time.Millisecond), float64(body.total)*8/took.Seconds()/1e9)
	if !waitFor(t, "the shadow to receive the upload", 60*time.Second, func() bool {
		return len(e.shadow.requests("/bulk/")) == 1
	}) {
		e.dumpMetrics(t)
		t.FailNow()
	}
	t.Logf("the shadow had it %v after the client's start", time.Since(start).Round(time.Millisecond))
	if p, s := e.prod.requests("/bulk/")[0].bodySum, e.shadow.requests("/bulk/")[0].bodySum; p != s {
		t.Errorf("the shadow's upload differs from prod's")
	}
	e.drained(t, 30*time.Second)
	e.dumpMetrics(t)
}

// pacedBody is a request body of pseudo-random bytes, read at most at rate
// bytes per second.
type pacedBody struct {
	rate, total, done int64
	seed              uint64
	start             time.Time
	x                 uint64
}

func (b *pacedBody) Read(p []byte) (int, error) {
	if b.done == b.total {
		return 0, io.EOF
	}
	if b.start.IsZero() {
		b.start, b.x = time.Now(), b.seed
	}
	p = p[:min(int64(len(p)), b.total-b.done, 256<<10)]
	if ahead := time.Duration(float64(b.done+int64(len(p)))/float64(b.rate)*1e9) - time.Since(b.start); ahead > 0 {
		time.Sleep(ahead)
	}
	for i := range p {
		b.x = b.x*6364136223846793005 + 1442695040888963407
		p[i] = byte(b.x >> 56)
	}
	b.done += int64(len(p))
	return len(p), nil
}

// TestServerPushStream: a long-lived connection on which the server pushes
// a line every 10 ms of its own accord while the client sends 150
// messages at irregular times and reads the server's echoes: the shadow
// receives every message, in order (scenario 35). The shadow's pushes
// are not answers to anything, nor are prod's: both sides' streams go on
// regardless of the client's.
func TestServerPushStream(t *testing.T) {
	const port, conns, msgs = 7000, 4, 150
	prodAddr := netip.AddrPortFrom(lab.ProdClientSideV4, port)
	e := newEnv(t, envOptions{
		noProdHTTP: true, noShadowHTTP: true,
		maps:        []string{fmt.Sprintf("%d-%s", port, netip.AddrPortFrom(lab.ShadowV4, port))},
		agentFilter: fmt.Sprintf("tcp and src port %d", port),
	})
	e.explainFailures(t)
	prod := startPushServer(t, e.lab.Prod, prodAddr)
	shadow := startPushServer(t, e.lab.Shadow, netip.AddrPortFrom(lab.ShadowV4, port))
	var wg sync.WaitGroup
	for c := 0; c < conns; c++ {
		wg.Go(func() {
			if err := pushClient(e.lab.Client, prodAddr, c, msgs); err != nil {
				t.Errorf("connection %d: %v", c, err)
			}
		})
	}
	wg.Wait()
	for c := 0; c < conns; c++ {
		want := prod.received(c)
		if len(want) != msgs {
			t.Fatalf("connection %d: prod received %d messages, want %d", c, len(want), msgs)
		}
		if !waitFor(t, fmt.Sprintf("connection %d's messages on the shadow", c), 30*time.Second, func() bool {
			return len(shadow.received(c)) >= msgs
		}) || !slices.Equal(shadow.received(c), want) {
			t.Errorf("connection %d: the shadow received %d messages, not prod's %d in order", c, len(shadow.received(c)), msgs)
		}
	}
	e.drained(t, 30*time.Second)
	e.dumpMetrics(t)
}

// pushServer pushes "tick N" lines every 10 ms on each connection and
// echoes each "msg C K" line it reads, recording them by connection C.
type pushServer struct {
	mu   sync.Mutex
	msgs map[int][]string
}

func startPushServer(t *testing.T, ns *lab.NS, addr netip.AddrPort) *pushServer {
	t.Helper()
	ln, err := ns.Listen("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	s := &pushServer{msgs: map[int][]string{}}
	done := make(chan struct{})
	t.Cleanup(func() { close(done); ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go s.serve(conn, done)
		}
	}()
	return s
}

func (s *pushServer) serve(conn net.Conn, done <-chan struct{}) {
	defer conn.Close()
	var wmu sync.Mutex
	write := func(line string) error {
		wmu.Lock()
		defer wmu.Unlock()
		_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_, err := io.WriteString(conn, line)
		return err
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for n := 0; ; n++ {
			select {
			case <-done:
				return
			case <-stop:
				return
			case <-tick.C:
				if write(fmt.Sprintf("tick %d\n", n)) != nil {
					return
				}
			}
		}
	}()
	r := bufio.NewScanner(conn)
	for r.Scan() {
		var c, k int
		if _, err := fmt.Sscanf(r.Text(), "msg %d %d", &c, &k); err != nil {
			return
		}
		s.mu.Lock()
		s.msgs[c] = append(s.msgs[c], r.Text())
		s.mu.Unlock()
		if write(fmt.Sprintf("echo %d\n", k)) != nil {
			return
		}
	}
}

func (s *pushServer) received(c int) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.msgs[c])
}

// pushClient sends msgs messages at 5-45 ms intervals, reading everything
// the server sends meanwhile, and waits for the last echo.
func pushClient(ns *lab.NS, addr netip.AddrPort, c, msgs int) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := ns.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Minute))
	lastEcho := make(chan error, 1)
	go func() {
		r := bufio.NewScanner(conn)
		for r.Scan() {
			if r.Text() == fmt.Sprintf("echo %d", msgs-1) {
				lastEcho <- nil
				return
			}
		}
		lastEcho <- fmt.Errorf("no echo of the last message: %v", r.Err())
	}()
	rng := rand.New(rand.NewPCG(uint64(c), 35))
	for k := 0; k < msgs; k++ {
		time.Sleep(time.Duration(5+rng.IntN(40)) * time.Millisecond)
		if _, err := fmt.Fprintf(conn, "msg %d %d\n", c, k); err != nil {
			return err
		}
	}
	return <-lastEcho
}

// TestShadowRejectsLogin: PostgreSQL with SCRAM-SHA-256 on prod and
// shadow, another password on the shadow, pgbench with 4 connections for
// 8 s on prod. The copied login cannot succeed (the shadow's nonce
// differs from prod's), so the shadow closes each copied connection, and
// each fresh one the copier opens after it: the copier gives each client
// connection up after a bounded number of them, counts shadow_rejected,
// and the shadow sees a bounded number of connections (scenario 32).
func TestShadowRejectsLogin(t *testing.T) {
	const port, clients = 5432, 4
	prodAddr := netip.AddrPortFrom(lab.ProdClientSideV4, port)
	shadowAddr := netip.AddrPortFrom(lab.ShadowV4, port)
	mapping := prodAddr.String() + "-" + shadowAddr.String()
	e := newEnv(t, envOptions{
		noProdHTTP: true, noShadowHTTP: true,
		maps:        []string{mapping},
		agentFilter: fmt.Sprintf("tcp and src port %d", port),
	})
	e.explainFailures(t)
	prod := startPostgres(t, e.lab.Prod, prodAddr, "prod-password")
	shadow := startPostgres(t, e.lab.Shadow, shadowAddr, "shadow-password")
	for _, p := range []*postgres{prod, shadow} {
		// The same tables on both: only the login differs.
		out, err := exec.Command("setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", "--",
			filepath.Join(pgBin, "pgbench"), "-i", "-s", "1", "-q", "-h", p.dir, "-U", "postgres", "postgres").CombinedOutput()
		if err != nil {
			t.Fatalf("pgbench -i: %v\n%s", err, out)
		}
	}
	cpu0 := procCPU(t, e.copier.PID())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := e.lab.Client.Run(ctx, "env", "PGPASSWORD=prod-password", filepath.Join(pgBin, "pgbench"),
		"-h", prodAddr.Addr().String(), "-p", fmt.Sprint(port), "-U", "postgres", "-c", fmt.Sprint(clients),
		"-T", "8", "-S", "-n", "postgres")
	if err != nil {
		t.Fatalf("pgbench on prod: %v\n%s", err, out)
	}
	t.Logf("pgbench on prod:\n%s", out)
	e.drained(t, 30*time.Second)
	m, err := e.copyMetrics()
	if err != nil {
		t.Fatal(err)
	}
	rejected := m[fmt.Sprintf(`tcpshadow_copy_shadow_rejected_total{map=%q}`, mapping)]
	conns, prodConns := shadow.tcpConnections(), prod.tcpConnections() // pgbench opens one more to set up
	t.Logf("prod saw %d connections, the shadow %d; shadow_rejected %v; the copier used %v of CPU",
		prodConns, conns, rejected, procCPU(t, e.copier.PID())-cpu0)
	if rejected < clients || rejected > float64(prodConns) {
		t.Errorf("shadow_rejected = %v, want %d..%d (one per client connection at most)", rejected, clients, prodConns)
	}
	// Each client connection: its own copy and at most 3 fresh ones.
	if limit := prodConns * 4; conns > limit || conns < prodConns {
		t.Errorf("the shadow saw %d connections, want %d..%d", conns, prodConns, limit)
	}
	if !strings.Contains(e.copier.Output(), "the shadow keeps closing fresh connections") {
		t.Errorf("the copy daemon logged no hint about the rejections:\n%s", e.copier.Output())
	}
	e.dumpMetrics(t)
}

// procCPU returns the user and system CPU time process pid has used.
func procCPU(t testing.TB, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	fs := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.Atoi(fs[11])
	stime, _ := strconv.Atoi(fs[12])
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}

// TestOnlyWhatProdAccepted: prod's firewall drops a source range; from
// the client's namespace, raw sockets send 3 s of SYNs at 1000/s spoofed
// from that range and one spoofed data segment carrying a request, and
// SYNs spoofed from addresses that do not exist; meanwhile 100 real
// connections run. Nothing spoofed reaches the shadow: no request, no
// connection; every real connection is copied (scenario 33).
//
// TrustInbound is the control: the same traffic with --trust-inbound
// does open shadow connections for the spoofed SYNs, so the test sees the
// harm it guards against.
func TestOnlyWhatProdAccepted(t *testing.T) {
	t.Run("Default", func(t *testing.T) { onlyWhatProdAccepted(t, false) })
	t.Run("TrustInbound", func(t *testing.T) { onlyWhatProdAccepted(t, true) })
}

func onlyWhatProdAccepted(t *testing.T, trust bool) {
	const spoofPerSec, spoofFor = 1000, 3 * time.Second
	var args []string
	if trust {
		args = []string{"--trust-inbound"}
	}
	e := newEnv(t, envOptions{copyArgs: args})
	e.explainFailures(t)
	firewalled := netip.MustParsePrefix("198.18.0.192/26")
	nft := fmt.Sprintf("add table inet tshtest\nadd chain inet tshtest in { type filter hook input priority 0; }\n"+
		"add rule inet tshtest in ip saddr %s counter drop\n", firewalled)
	cmd := e.lab.Prod.Command(context.Background(), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(nft)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
	base, err := e.copyMetrics()
	if err != nil {
		t.Fatal(err)
	}
	shadowConns := e.shadow.conns.Load()

	spoofDone := make(chan error, 1)
	go func() { spoofDone <- spoof(e.lab.Client, firewalled, spoofPerSec, spoofFor) }()
	newConns(t, e.lab.Client, prodV4, "/legit", 100)
	if err := <-spoofDone; err != nil {
		t.Fatal(err)
	}
	e.checkCopied(t, "/legit/", 100)
	if trust {
		// The spoofed SYNs were copied: the shadow answered them.
		m, err := e.copyMetrics()
		if err != nil {
			t.Fatal(err)
		}
		started := m[`tcpshadow_copy_events_total{event="sessions_started"}`] - base[`tcpshadow_copy_events_total{event="sessions_started"}`]
		t.Logf("with --trust-inbound: sessions_started %v", started)
		if started < spoofPerSec*spoofFor.Seconds()/2 {
			t.Errorf("with --trust-inbound, sessions_started %v: the spoofed SYNs should have been copied", started)
		}
		return
	}
	e.drained(t, 30*time.Second)
	if got := e.shadow.requests("/injected"); len(got) != 0 {
		t.Errorf("the shadow served %d spoofed requests", len(got))
	}
	if n := e.shadow.conns.Load() - shadowConns; n != 100 {
		t.Errorf("the shadow accepted %d connections, want the 100 real ones", n)
	}
	m, err := e.copyMetrics()
	if err != nil {
		t.Fatal(err)
	}
	notAccepted := m[`tcpshadow_copy_events_total{event="not_accepted"}`] - base[`tcpshadow_copy_events_total{event="not_accepted"}`]
	started := m[`tcpshadow_copy_events_total{event="sessions_started"}`] - base[`tcpshadow_copy_events_total{event="sessions_started"}`]
	t.Logf("not_accepted %v, sessions_started %v", notAccepted, started)
	if started != 100 || notAccepted < spoofPerSec*spoofFor.Seconds()/2 {
		t.Errorf("sessions_started %v (want 100), not_accepted %v (want the spoofed SYNs)", started, notAccepted)
	}
	e.dumpMetrics(t)
}

// spoof sends, from ns over a raw socket, SYNs to prod's port 80 at rate
// per second for d, their sources alternating between the firewalled
// prefix and addresses nobody holds, then one data segment spoofed from
// the firewalled prefix that carries a whole request.
func spoof(ns *lab.NS, firewalled netip.Prefix, rate int, d time.Duration) error {
	var s *rawsock.Sender
	if err := ns.Do(func() (err error) { s, err = rawsock.Open(); return err }); err != nil {
		return err
	}
	defer s.Close()
	dst := netip.AddrPortFrom(lab.ProdClientSideV4, 80)
	buf := make([]byte, 1500)
	send := func(seg rewrite.Segment) error {
		n, err := seg.Put(buf)
		if err != nil {
			return err
		}
		return s.Send(buf[:n])
	}
	nobody := netip.MustParsePrefix("198.18.0.128/26") // on the client's link, unused
	start := time.Now()
	for i := 0; time.Since(start) < d; i++ {
		pfx := firewalled
		if i%2 == 1 {
			pfx = nobody
		}
		a := pfx.Addr().As4()
		a[3] += byte(1 + i%60)
		src := netip.AddrPortFrom(netip.AddrFrom4(a), uint16(10000+i%50000))
		if err := send(rewrite.Segment{Src: src, Dst: dst, Seq: uint32(i) * 7919, Flags: rewrite.FlagSYN, Window: 64240,
			Options: rewrite.AppendMSS(nil, 1460)}); err != nil {
			return err
		}
		if wait := time.Duration(i+1)*time.Second/time.Duration(rate) - time.Since(start); wait > 0 {
			time.Sleep(wait)
		}
	}
	a := firewalled.Addr().As4()
	a[3] += 7
	return send(rewrite.Segment{
		Src: netip.AddrPortFrom(netip.AddrFrom4(a), 31337), Dst: dst, Seq: 123456, Ack: 654321,
		Flags: rewrite.FlagPSH | rewrite.FlagACK, Window: 502,
		Payload: []byte("GET /injected HTTP/1.1\r\nHost: prod\r\n\r\n"),
	})
}
