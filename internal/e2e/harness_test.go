package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/lab"
	"github.com/tcpshadow/tcpshadow/internal/metrics"
)

// binPath is the tcpshadow binary built once for all tests.
var binPath string

func TestMain(m *testing.M) {
	if spec := os.Getenv(holdEnv); spec != "" {
		os.Exit(holdConnections(spec))
	}
	code := func() int {
		if os.Geteuid() != 0 {
			return m.Run() // every test skips through lab.NewT
		}
		dir, err := os.MkdirTemp("", "tcpshadow-e2e-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		binPath = filepath.Join(dir, "tcpshadow")
		// The daemons run as shipped: a race-built copier is several
		// times slower and drops packets under the loads these tests
		// make. Their concurrency is covered by the -race unit tests
		// (TEST_E2E_RACE=1 builds them with -race anyway).
		args := []string{"build", "-o", binPath}
		if os.Getenv("TEST_E2E_RACE") != "" {
			args = append(args, "-race")
		}
		out, err := exec.Command("go", append(args, "github.com/tcpshadow/tcpshadow/cmd/tcpshadow")...).CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build tcpshadow: %v\n%s", err, out)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

const (
	metricsPort = "9464"
	agentPort   = "36524"
)

// request is what a server saw.
type request struct {
	method, path, bodySum string
	remote                netip.Addr
}

// server is an HTTP/1.1 server recording every request it serves. Its
// response is a function of the path only, so prod and shadow answer alike.
type server struct {
	mu    sync.Mutex
	reqs  []request
	srv   *http.Server
	conns atomic.Int64 // connections accepted
}

func startServer(t *testing.T, ns *lab.NS, addrs ...string) *server {
	t.Helper()
	return startServerWrapped(t, ns, nil, addrs...)
}

// startServerWrapped is startServer with wrap (if not nil) around the
// recording handler.
func startServerWrapped(t *testing.T, ns *lab.NS, wrap func(http.Handler) http.Handler, addrs ...string) *server {
	t.Helper()
	s := &server{}
	var h http.Handler = http.HandlerFunc(s.handle)
	if wrap != nil {
		h = wrap(h)
	}
	s.srv = &http.Server{
		ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateNew {
				s.conns.Add(1)
			}
		},
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       60 * time.Second,
	}
	for _, a := range addrs {
		ln, err := ns.Listen("tcp", a)
		if err != nil {
			t.Fatal(err)
		}
		go s.srv.Serve(ln)
	}
	t.Cleanup(func() { s.srv.Close() })
	return s
}

func (s *server) handle(w http.ResponseWriter, r *http.Request) {
	h := sha256.New()
	_, err := io.Copy(h, r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ap, _ := netip.ParseAddrPort(r.RemoteAddr)
	s.mu.Lock()
	s.reqs = append(s.reqs, request{
		method: r.Method, path: r.URL.Path, bodySum: hex.EncodeToString(h.Sum(nil)),
		remote: ap.Addr().Unmap(),
	})
	s.mu.Unlock()
	_, _ = w.Write(responseFor(r.URL.Path))
}

// responseFor is the deterministic body for a path: its size varies with
// the path so that pacing sees responses of different lengths.
func responseFor(path string) []byte {
	n := 64 + len(path)*37%3000
	b := make([]byte, n)
	for i := range b {
		b[i] = 'a' + byte((i+len(path))%26)
	}
	return b
}

// requests returns the recorded requests whose path has prefix.
func (s *server) requests(prefix string) []request {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []request
	for _, r := range s.reqs {
		if strings.HasPrefix(r.path, prefix) {
			out = append(out, r)
		}
	}
	return out
}

// env is a lab with HTTP servers in prod and shadow, the agent on assist
// and the copy daemon on prod.
type env struct {
	t      *testing.T
	lab    *lab.Lab
	prod   *server
	shadow *server
	agent  *lab.Process
	copier *lab.Process
	opts   envOptions
	// agentCmd is the agent's program and arguments, for restartAgent.
	agentCmd []string
	// divergenceLog is the copier's divergence log, when the harness
	// chose its path.
	divergenceLog string
	// secret is the control channel's secret file the harness gave both
	// daemons (empty when the test brought its own or none).
	secret string
}

// envOptions shape an env; the zero value is the HTTP setup of TestCopyHTTP.
type envOptions struct {
	copyArgs  []string   // extra copy flags
	agentArgs []string   // extra intercept flags
	lab       lab.Config // lab shape (the zero value leaves offloads on)
	// maps replace the default --map values (port 80, both families).
	maps []string
	// agentFilter replaces the agent's --filter "tcp and src port 80";
	// noAgentFilter gives it none, its default.
	agentFilter   string
	noAgentFilter bool
	// noProdHTTP, noShadowHTTP: no Go HTTP server there (e.prod or
	// e.shadow stays nil); the test brings its own server.
	noProdHTTP, noShadowHTTP bool
	// wrap, when set, wraps each HTTP server's recording handler; side is
	// "prod" or "shadow".
	wrap func(side string, h http.Handler) http.Handler
	// lateCopier: newEnv does not start the copy daemon; the test calls
	// e.startCopier.
	lateCopier bool
	// bin replaces binPath (e.g. a copy other users may execute).
	bin string
	// prefix, when set, returns the command run in front of the binary for
	// a subcommand ("intercept", "copy"), e.g. setpriv ... --.
	prefix func(subcommand string) []string
	// secretUID owns the secret file the harness writes (0: root), for
	// daemons that do not run as root.
	secretUID int
}

// hasFlag reports whether args hold one of flags.
func hasFlag(args []string, flags ...string) bool {
	for _, a := range args {
		for _, f := range flags {
			if a == f || strings.HasPrefix(a, f+"=") {
				return true
			}
		}
	}
	return false
}

// writeSecretFile writes a control channel secret, mode 0600, owned by
// uid, in a directory uid can enter, and returns its path.
func writeSecretFile(t testing.TB, content string, uid int) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tcpshadow-secret-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "secret")
	if err := os.WriteFile(p, []byte(content+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p, uid, uid); err != nil {
		t.Fatal(err)
	}
	return p
}

// command returns the program and arguments that run tcpshadow with args
// (args[0] is the subcommand), honouring o.bin and o.prefix.
func (o envOptions) command(args ...string) (string, []string) {
	bin := binPath
	if o.bin != "" {
		bin = o.bin
	}
	var argv []string
	if o.prefix != nil {
		argv = append(argv, o.prefix(args[0])...)
	}
	argv = append(append(argv, bin), args...)
	return argv[0], argv[1:]
}

func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	l := lab.NewT(t, o.lab)
	e := &env{t: t, lab: l, opts: o}
	wrapFor := func(side string) func(http.Handler) http.Handler {
		if o.wrap == nil {
			return nil
		}
		return func(h http.Handler) http.Handler { return o.wrap(side, h) }
	}
	if !o.noProdHTTP {
		e.prod = startServerWrapped(t, l.Prod, wrapFor("prod"),
			netip.AddrPortFrom(lab.ProdClientSideV4, 80).String(),
			netip.AddrPortFrom(lab.ProdClientSideV6, 80).String())
	}
	if !o.noShadowHTTP {
		e.shadow = startServerWrapped(t, l.Shadow, wrapFor("shadow"),
			netip.AddrPortFrom(lab.ShadowV4, 80).String(),
			netip.AddrPortFrom(lab.ShadowV6, 80).String())
	}
	filter := o.agentFilter
	if filter == "" {
		filter = "tcp and src port 80"
	}
	ctx := context.Background()
	var err error
	agentArgs := o.agentArgs
	// Every agent needs a secret: the harness gives one to both daemons
	// unless the test brought its own, or runs the agent insecure.
	if !hasFlag(agentArgs, "--secret-file", "--insecure-no-auth") {
		e.secret = writeSecretFile(t, "ZTJlLWNvbnRyb2wtY2hhbm5lbC1zZWNyZXQ=", o.secretUID)
		agentArgs = append(slices.Clone(agentArgs), "--secret-file", e.secret)
	}
	argv := []string{"intercept", "--iface", lab.HostLink, "--filter", filter}
	if o.noAgentFilter {
		argv = argv[:3]
	}
	name, args := o.command(append(append(argv, "--listen", net.JoinHostPort(lab.AssistV4.String(), agentPort),
		"--stats-interval", "0", "--metrics", net.JoinHostPort(lab.AssistV4.String(), metricsPort)),
		agentArgs...)...)
	e.agentCmd = append([]string{name}, args...)
	e.agent, err = l.Assist.Start(ctx, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	e.waitListening(l.Prod, net.JoinHostPort(lab.AssistV4.String(), agentPort))
	t.Cleanup(func() {
		if t.Failed() {
			if e.copier != nil {
				t.Logf("copy daemon output:\n%s", e.copier.Output())
			}
			t.Logf("agent output:\n%s", e.agent.Output())
		}
	})
	if !o.lateCopier {
		e.startCopier()
	}
	e.watchShadowLeaks()
	return e
}

// startCopier starts the copy daemon in prod and waits until it is
// connected to the agent.
func (e *env) startCopier() {
	e.t.Helper()
	maps := e.opts.maps
	if len(maps) == 0 {
		maps = []string{
			fmt.Sprintf("%s:80-%s:80", lab.ProdClientSideV4, lab.ShadowV4),
			fmt.Sprintf("[%s]:80-[%s]:80", lab.ProdClientSideV6, lab.ShadowV6),
		}
	}
	args := []string{"copy", "--iface", lab.ProdClientLink}
	for _, m := range maps {
		args = append(args, "--map", m)
	}
	args = append(args,
		"--intercept", lab.AssistV4.String(),
		"--client-pool", lab.PoolV4.String(), "--client-pool", lab.PoolV6.String(),
		"--metrics", net.JoinHostPort(lab.ProdClientSideV4.String(), metricsPort),
		"--stats-interval", "0", "--linger", "1s", "--idle-timeout", "10s",
		"--workers", "2",
	)
	var err error
	copyArgs := e.opts.copyArgs
	if e.secret != "" && !hasFlag(copyArgs, "--secret-file") {
		copyArgs = append(slices.Clone(copyArgs), "--secret-file", e.secret)
	}
	switch {
	case hasFlag(copyArgs, "--divergence-log", "--no-divergence-log", "--compare-prefix=0") ||
		slices.Index(copyArgs, "--compare-prefix") >= 0 && slices.Index(copyArgs, "0") == slices.Index(copyArgs, "--compare-prefix")+1:
	case e.opts.prefix != nil:
		// A daemon run as another user cannot write in the test's
		// directory.
		copyArgs = append(slices.Clone(copyArgs), "--no-divergence-log")
	default:
		// Comparison is on by default; its log goes where the test can
		// read it, never to the host's /var/log.
		e.divergenceLog = filepath.Join(e.t.TempDir(), "divergence.jsonl")
		copyArgs = append(slices.Clone(copyArgs), "--divergence-log", e.divergenceLog)
	}
	name, argv := e.opts.command(append(args, copyArgs...)...)
	e.copier, err = e.lab.Prod.Start(context.Background(), name, argv...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.waitFor("copy daemon connected to the agent", 10*time.Second, func() bool {
		m, err := e.copyMetrics()
		return err == nil && m["tcpshadow_agent_connected"] == 1
	})
}

// restartAgent starts the agent again with newEnv's arguments, once the
// previous one has exited, and waits until it listens.
func (e *env) restartAgent() {
	e.t.Helper()
	if !e.agent.Exited() {
		e.t.Fatalf("restartAgent: %v is still running", e.agent)
	}
	p, err := e.lab.Assist.Start(context.Background(), e.agentCmd[0], e.agentCmd[1:]...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.agent = p
	e.waitListening(e.lab.Prod, net.JoinHostPort(lab.AssistV4.String(), agentPort))
}

// waitListening waits until addr accepts connections from ns.
func (e *env) waitListening(ns *lab.NS, addr string) {
	e.waitFor(addr+" listening", 10*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		c, err := ns.DialContext(ctx, "tcp", addr)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
}

// waitFor polls cond every 50 ms until it holds or timeout passes.
func (e *env) waitFor(what string, timeout time.Duration, cond func() bool) {
	e.t.Helper()
	waitFor(e.t, what, timeout, cond)
}

func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) bool {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Errorf("timed out after %v waiting for %s", timeout, what)
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

// dumpMetrics logs the copy daemon's and agent's non-zero metrics.
func (e *env) dumpMetrics(t testing.TB) {
	for name, get := range map[string]func() (map[string]float64, error){"copy": e.copyMetrics, "agent": e.agentMetrics} {
		m, err := get()
		if err != nil {
			t.Logf("%s metrics: %v", name, err)
			continue
		}
		var lines []string
		for k, v := range m {
			if v != 0 && strings.HasPrefix(k, "tcpshadow_") {
				lines = append(lines, fmt.Sprintf("%s %g", k, v))
			}
		}
		sort.Strings(lines)
		t.Logf("%s metrics:\n%s", name, strings.Join(lines, "\n"))
	}
}

// scrape reads a daemon's metrics from inside namespace ns.
func scrape(ns *lab.NS, addr string) (map[string]float64, error) {
	c := ns.HTTPClient(1)
	defer c.CloseIdleConnections()
	return metrics.Scrape(c, "http://"+addr+"/metrics")
}

func (e *env) copyMetrics() (map[string]float64, error) {
	return scrape(e.lab.Prod, net.JoinHostPort(lab.ProdClientSideV4.String(), metricsPort))
}

func (e *env) agentMetrics() (map[string]float64, error) {
	return scrape(e.lab.Prod, net.JoinHostPort(lab.AssistV4.String(), metricsPort))
}

// watchShadowLeaks counts, in the client namespace, every packet from the
// shadow: none may ever arrive there.
func (e *env) watchShadowLeaks() {
	rules := fmt.Sprintf(`table inet e2e {
	chain pre {
		type filter hook prerouting priority -300; policy accept;
		ip saddr %s counter
		ip6 saddr %s counter
	}
}`, lab.ShadowV4, lab.ShadowV6)
	cmd := e.lab.Client.Command(context.Background(), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		e.t.Fatalf("nft: %v: %s", err, out)
	}
}

// shadowLeaks returns how many packets from the shadow reached the client.
func (e *env) shadowLeaks() int {
	out, err := e.lab.Client.Run(context.Background(), "nft", "list", "table", "inet", "e2e")
	if err != nil {
		e.t.Fatal(err)
	}
	total := 0
	for _, line := range strings.Split(string(out), "\n") {
		fs := strings.Fields(line)
		for i := 0; i+1 < len(fs); i++ {
			if fs[i] == "packets" {
				n, _ := strconv.Atoi(fs[i+1])
				total += n
			}
		}
	}
	return total
}

// checkCopied asserts the shadow received exactly the requests prod
// received under prefix, byte-identical in method, path and body, each
// from an address in the pool.
func (e *env) checkCopied(t testing.TB, prefix string, want int) {
	t.Helper()
	if got := len(e.prod.requests(prefix)); got != want {
		t.Fatalf("prod served %d %s requests, want %d", got, prefix, want)
	}
	if !waitFor(t, fmt.Sprintf("shadow to receive %d %s requests", want, prefix), 60*time.Second, func() bool {
		return len(e.shadow.requests(prefix)) >= want
	}) {
		e.dumpMetrics(t)
		t.FailNow()
	}
	prod, shadow := e.prod.requests(prefix), e.shadow.requests(prefix)
	if len(shadow) != len(prod) {
		t.Fatalf("shadow received %d %s requests, prod %d", len(shadow), prefix, len(prod))
	}
	key := func(r request) string { return r.method + " " + r.path + " " + r.bodySum }
	seen := make(map[string]int)
	for _, r := range prod {
		seen[key(r)]++
	}
	for _, r := range shadow {
		seen[key(r)]--
		if !lab.PoolV4.Contains(r.remote) && !lab.PoolV6.Contains(r.remote) {
			t.Fatalf("shadow saw %s from %v, outside the client pools", r.path, r.remote)
		}
	}
	for k, n := range seen {
		if n != 0 {
			t.Fatalf("request %q: prod and shadow counts differ by %d", k, n)
		}
	}
}

// drained waits until every session ended and left the copier's table and
// its buffers are empty, and neither the copier nor the agent holds a
// flow any more.
func (e *env) drained(t testing.TB, timeout time.Duration) {
	t.Helper()
	var last map[string]float64
	ok := waitFor(t, "the copier's session table to empty", timeout, func() bool {
		m, err := e.copyMetrics()
		if err != nil {
			return false
		}
		last = m
		ended := 0.0
		for k, v := range m {
			if strings.HasPrefix(k, "tcpshadow_copy_sessions_ended_total{") {
				ended += v
			}
		}
		return m["tcpshadow_copy_sessions_active"] == 0 &&
			ended == m[`tcpshadow_copy_events_total{event="sessions_started"}`]
	})
	if !ok {
		e.dumpMetrics(t)
		return
	}
	if b := last["tcpshadow_copy_buffered_bytes"]; b != 0 {
		t.Errorf("buffered bytes %v after all sessions ended", b)
	}
	var agent map[string]float64
	if !waitFor(t, "both flow gauges back to 0", timeout, func() bool {
		c, err1 := e.copyMetrics()
		a, err2 := e.agentMetrics()
		agent = a
		return err1 == nil && err2 == nil && c["tcpshadow_agent_flows"] == 0 && a["tcpshadow_intercept_flows"] == 0
	}) {
		t.Logf("agent: flows %v, expired %v", agent["tcpshadow_intercept_flows"], agent["tcpshadow_intercept_flows_expired_total"])
		e.dumpMetrics(t)
	}
}
