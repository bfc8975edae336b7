package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

const (
	maxScale     = 10
	catchUpWait  = 30 * time.Second // shadow's access log catching up with prod's
	drainWait    = 15 * time.Second // copier's sessions ending after the traffic
	lingerWait   = 2 * time.Second  // ended sessions leaving the table (--linger 1s)
	maxErrsShown = 5
)

type demoOptions struct {
	bin     string
	nginx   string
	keep    bool
	scale   float64
	timeout time.Duration
	verbose bool
}

// demoConfig is the validated form of demoOptions.
type demoConfig struct {
	bin, nginx string
	keep       bool
	scale      float64
	timeout    time.Duration // bounds driving the traffic
	catchUp    time.Duration // bounds waiting for the shadow to catch up
	verbose    bool
	copyArgs   []string // extra copy flags; tests break copying with them
}

func newDemoCmd() *cobra.Command {
	o := &demoOptions{}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Copy bounded HTTP traffic from prod's nginx to the shadow's and report",
		Long: `demo builds a sealed lab, starts nginx in prod and in the shadow, the intercept
agent on the assist host and the copy daemon on prod, drives bounded HTTP
traffic (keep-alive and short connections, POSTs, IPv4 and IPv6) from the
client namespace to prod, then compares the two nginx access logs and prints
the copy daemon's counters. Every load and wait is bounded (--timeout for the
traffic, 30s for the shadow to catch up, 17s for sessions to end). Everything
is torn down on exit, Ctrl-C included; --keep holds the lab up until Ctrl-C.

Exit status 0 only when the shadow served every request prod served
(same method, path and length), from client-pool addresses, and no packet
from the shadow reached the client.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := o.config()
			if err != nil {
				return err
			}
			res, err := runDemo(cmd.Context(), cfg, cmd.OutOrStdout())
			if err != nil {
				return err
			}
			return res.verdict()
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.bin, "bin", "", "tcpshadow binary to run (required; make build writes bin/tcpshadow)")
	f.StringVar(&o.nginx, "nginx", defaultNginx, "nginx binary (Debian's nginx-light)")
	f.BoolVar(&o.keep, "keep", false, "after the report, keep the lab up until Ctrl-C and print how to look at it")
	f.Float64Var(&o.scale, "scale", 1, fmt.Sprintf("multiply the number of requests (0 < scale <= %d)", maxScale))
	f.DurationVar(&o.timeout, "timeout", 60*time.Second, "bound on driving the traffic")
	f.BoolVarP(&o.verbose, "verbose", "v", false, "show the lab's log and the daemons' output")
	return cmd
}

// config validates the flags; every error names its flag.
func (o *demoOptions) config() (*demoConfig, error) {
	bin, ngx, err := labBinaries(o.bin, o.nginx)
	if err != nil {
		return nil, err
	}
	if !(o.scale > 0 && o.scale <= maxScale) {
		return nil, fmt.Errorf("--scale %g: want more than 0, at most %d", o.scale, maxScale)
	}
	if o.timeout < time.Second || o.timeout > 10*time.Minute {
		return nil, fmt.Errorf("--timeout %v: want 1s to 10m", o.timeout)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("demo needs root to create network namespaces")
	}
	return &demoConfig{bin: bin, nginx: ngx, keep: o.keep, scale: o.scale,
		timeout: o.timeout, catchUp: catchUpWait, verbose: o.verbose}, nil
}

// labBinaries validates --bin and --nginx, which demo and bench share,
// and returns them absolute.
func labBinaries(bin, nginx string) (string, string, error) {
	if bin == "" {
		return "", "", errors.New("--bin is required: the tcpshadow binary (make build writes bin/tcpshadow)")
	}
	bin, err := executable(bin)
	if err != nil {
		return "", "", fmt.Errorf("--bin: %w", err)
	}
	ngx, err := executable(nginx)
	if err != nil {
		return "", "", fmt.Errorf("--nginx: %w (apt-get install nginx-light)", err)
	}
	return bin, ngx, nil
}

// executable returns path made absolute (the daemons run with ip netns
// exec) after checking it is an executable regular file.
func executable(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("%s is not an executable file", abs)
	}
	return abs, nil
}

// trafficKind is one kind of load; its requests' paths start with
// "/"+key+"/", which is how the access logs are split by kind.
type trafficKind struct {
	key, title string
	requests   int
	run        func(ctx context.Context, d *driver)
}

// kinds returns the demo's loads at scale: at 1, 200 keep-alive GETs over
// 10 connections, 100 GETs one connection each, 20 POSTs of 1 KiB to
// 256 KiB, 100 keep-alive GETs over IPv6, and 200 keep-alive GETs of
// which the shadow fails one in five and answers one in five late.
func kinds(s *stage, scale float64) []trafficKind {
	n := func(base int) int { return max(1, int(math.Ceil(float64(base)*scale))) }
	const conns = 10
	ka4, short, posts, ka6, cmp := n(20), n(100), n(20), n(10), max(5, n(20))
	return []trafficKind{
		{"ka4", fmt.Sprintf("keep-alive GETs, IPv4, %d connections", conns), conns * ka4,
			func(ctx context.Context, d *driver) { d.keepAlive(ctx, "ka4", s.prodV4, conns, ka4) }},
		{"short", "GETs, IPv4, one connection each", short,
			func(ctx context.Context, d *driver) { d.short(ctx, "short", s.prodV4, short, conns) }},
		{"upload", "POSTs of 1 KiB to 256 KiB, IPv4", posts,
			func(ctx context.Context, d *driver) { d.posts(ctx, "upload", s.prodV4, posts, 4) }},
		{"ka6", fmt.Sprintf("keep-alive GETs, IPv6, %d connections", conns), conns * ka6,
			func(ctx context.Context, d *driver) { d.keepAlive(ctx, "ka6", s.prodV6, conns, ka6) }},
		{cmpKey, fmt.Sprintf("keep-alive GETs, some failing or slow on the shadow, %d connections", conns), conns * cmp,
			func(ctx context.Context, d *driver) { d.keepAlivePaths(ctx, cmpKey, s.prodV4, conns, cmp, cmpPath) }},
	}
}

// driver sends requests from the client namespace and checks every
// response is prod's.
type driver struct {
	ns *lab.NS

	mu        sync.Mutex // guards the fields below
	ok        map[string]int
	firstErrs []string // the first few failures, for the report
}

func (d *driver) do(ctx context.Context, c *http.Client, key, method string, to netip.AddrPort, path string, body []byte) {
	want, wantStatus := "hello from prod\n", http.StatusOK
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
		want, wantStatus = "stored by prod\n", http.StatusCreated
	}
	err := func() error {
		req, err := http.NewRequestWithContext(ctx, method, "http://"+to.String()+path, r)
		if err != nil {
			return err
		}
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		got, err := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
		if err != nil {
			return err
		}
		if resp.StatusCode != wantStatus || string(got) != want {
			return fmt.Errorf("%s %s: status %d, body %q; want %d %q", method, path, resp.StatusCode, got, wantStatus, want)
		}
		return nil
	}()
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		if len(d.firstErrs) < maxErrsShown {
			d.firstErrs = append(d.firstErrs, err.Error())
		}
		return
	}
	d.ok[key]++
}

// keepAlive sends per requests on each of conns kept-alive connections,
// the connections in parallel.
func (d *driver) keepAlive(ctx context.Context, key string, to netip.AddrPort, conns, per int) {
	d.keepAlivePaths(ctx, key, to, conns, per, func(c, i int) string { return fmt.Sprintf("/%s/%d/%d", key, c, i) })
}

// keepAlivePaths is keepAlive with request i of connection c to path(c, i).
func (d *driver) keepAlivePaths(ctx context.Context, key string, to netip.AddrPort, conns, per int, path func(c, i int) string) {
	var wg sync.WaitGroup
	for c := range conns {
		wg.Go(func() {
			client := d.ns.HTTPClient(1)
			defer client.CloseIdleConnections()
			for i := 0; i < per && ctx.Err() == nil; i++ {
				d.do(ctx, client, key, http.MethodGet, to, path(c, i), nil)
			}
		})
	}
	wg.Wait()
}

// short sends n GETs, each on its own connection, parallel at a time.
func (d *driver) short(ctx context.Context, key string, to netip.AddrPort, n, parallel int) {
	var wg sync.WaitGroup
	for w := range parallel {
		wg.Go(func() {
			client := d.ns.HTTPClient(1)
			client.Transport.(*http.Transport).DisableKeepAlives = true
			for i := w; i < n && ctx.Err() == nil; i += parallel {
				d.do(ctx, client, key, http.MethodGet, to, fmt.Sprintf("/%s/%d", key, i), nil)
			}
		})
	}
	wg.Wait()
}

// posts sends n POSTs of 1 KiB, 2 KiB, ... 256 KiB (cycling) of seeded
// random bytes over up to parallel kept-alive connections.
func (d *driver) posts(ctx context.Context, key string, to netip.AddrPort, n, parallel int) {
	client := d.ns.HTTPClient(parallel)
	defer client.CloseIdleConnections()
	var wg sync.WaitGroup
	sem := make(chan struct{}, parallel)
	for i := 0; i < n && ctx.Err() == nil; i++ {
		body := make([]byte, 1024<<(i%9))
		rng := rand.New(rand.NewPCG(uint64(i), 7))
		for j := range body {
			body[j] = byte(rng.Uint32())
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			d.do(ctx, client, key, http.MethodPost, to, fmt.Sprintf("/%s/%d", key, i), body)
		})
	}
	wg.Wait()
}

// kindStat is one traffic kind's outcome.
type kindStat struct {
	key, title         string
	sent, prod, shadow int // sent: requests the client completed
	copied             int // prod's requests the shadow served identically
	missing            []string
}

// demoResult is what the demo found; verdict turns it into the exit status.
type demoResult struct {
	labName                     string   // "<prefix>-<id>", the namespaces' common prefix
	dirs                        []string // nginx directories, removed at teardown
	kinds                       []kindStat
	planned                     int // requests the demo meant to send
	sent, prod, shadow, copied  int // sent: requests prod answered as expected
	shadowOther                 int // shadow requests outside the demo's kinds
	sources                     []netip.Addr
	outOfPool                   []netip.Addr
	prodSources                 []netip.Addr
	leaks                       int // packets from the shadow seen in the client namespace
	copyMetrics, agentMetrics   map[string]float64
	copyMetricsErr, agentMetErr error
	cmp                         *comparison // the copy daemon's report on the shadow's failures
}

// verdict is nil only when every request prod served was copied, from the
// pools, without a shadow packet reaching the client.
func (r *demoResult) verdict() error {
	var why []string
	if r.sent < r.planned {
		why = append(why, fmt.Sprintf("%d of %d requests went unanswered by prod", r.planned-r.sent, r.planned))
	}
	if r.copied < r.prod || r.prod == 0 {
		why = append(why, fmt.Sprintf("the shadow got copies of %d of prod's %d requests", r.copied, r.prod))
	}
	if len(r.outOfPool) > 0 {
		why = append(why, fmt.Sprintf("%d shadow source addresses outside the client pools", len(r.outOfPool)))
	}
	if r.leaks > 0 {
		why = append(why, fmt.Sprintf("%d packets from the shadow reached the client", r.leaks))
	}
	if len(why) > 0 {
		return fmt.Errorf("demo failed: %s", strings.Join(why, "; "))
	}
	return nil
}

// runDemo runs the whole demo, writing progress and the report to out. It
// returns an error when the demo could not run; whether the copy was
// complete is the result's verdict. The lab is torn down before it returns,
// whatever happens.
func runDemo(ctx context.Context, cfg *demoConfig, out io.Writer) (_ *demoResult, err error) {
	start := time.Now()
	level := slog.LevelWarn
	if cfg.verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	st, err := upStage(ctx, stageConfig{bin: cfg.bin, nginx: cfg.nginx, copyArgs: cfg.copyArgs, progress: out, log: log})
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("interrupted: %w", err)
		}
		fmt.Fprintln(out, "set-up failed; everything it started is torn down")
		return nil, fmt.Errorf("set up demo: %w", err)
	}
	defer func() {
		if ctx.Err() != nil {
			fmt.Fprintln(out, "interrupted")
		}
		err = errors.Join(err, teardown(st, out))
		fmt.Fprintf(out, "demo took %v\n", time.Since(start).Round(100*time.Millisecond))
	}()
	if cfg.verbose {
		defer func() {
			fmt.Fprintf(out, "--- copier output (tail) ---\n%s\n--- agent output (tail) ---\n%s\n",
				tail(st.copier.Output(), 40), tail(st.agent.Output(), 40))
		}()
	}

	if err := watchShadowLeaks(ctx, st.lab); err != nil {
		return nil, err
	}
	stopSlow, err := startSlowBackend(st.lab.Shadow)
	if err != nil {
		return nil, err
	}
	defer stopSlow() // before the teardown: it listens in the shadow namespace
	ks := kinds(st, cfg.scale)
	d := &driver{ns: st.lab.Client, ok: make(map[string]int)}
	total := 0
	for _, k := range ks {
		total += k.requests
	}
	fmt.Fprintf(out, "driving traffic from the client namespace: %d requests, at most %v\n", total, cfg.timeout)
	tctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	for _, k := range ks {
		t0 := time.Now()
		k.run(tctx, d)
		fmt.Fprintf(out, "  %-40s %4d requests, %4d answered by prod (%v)\n",
			k.title, k.requests, d.ok[k.key], time.Since(t0).Round(time.Millisecond))
	}
	cancel()
	if ctx.Err() != nil {
		return nil, fmt.Errorf("interrupted: %w", ctx.Err())
	}
	for _, e := range d.firstErrs {
		fmt.Fprintf(out, "  client error: %s\n", e)
	}

	fmt.Fprintf(out, "waiting for the shadow's access log to catch up (at most %v) ...\n", cfg.catchUp)
	sent := 0
	for _, n := range d.ok {
		sent += n
	}
	var res *demoResult
	t0, checks := time.Now(), 0
	werr := poll(ctx, cfg.catchUp, func() (bool, error) {
		var err error
		checks++
		res, err = matchLogs(st, ks, d)
		if err != nil {
			return false, err
		}
		return res.prod >= sent && res.copied == res.prod, nil
	})
	switch {
	case errors.Is(werr, errTimedOut):
		fmt.Fprintf(out, "  gave up after %v: shadow has %d of prod's %d requests\n", cfg.catchUp, res.copied, res.prod)
	case werr != nil:
		return nil, fmt.Errorf("wait for the shadow: %w", werr)
	case checks == 1:
		fmt.Fprintln(out, "  it already had")
	default:
		fmt.Fprintf(out, "  caught up in %v\n", time.Since(t0).Round(time.Millisecond))
	}
	// Let the copier's sessions end (the client closed its connections)
	// so its counters are final; not a failure if some never do. Ended
	// sessions may stay in the table (sessions_active) a while longer to
	// keep their place, so this waits for ended == started, not active 0.
	_ = poll(ctx, drainWait, func() (bool, error) {
		m, err := st.copyMetrics()
		return err == nil && endedTotal(m) >= m[`tcpshadow_copy_events_total{event="sessions_started"}`], nil
	})
	// Then give ended sessions their --linger to leave the table.
	_ = poll(ctx, lingerWait, func() (bool, error) {
		m, err := st.copyMetrics()
		return err == nil && m["tcpshadow_copy_sessions_active"] == 0, nil
	})
	if ctx.Err() != nil {
		return nil, fmt.Errorf("interrupted: %w", ctx.Err())
	}
	res.planned = total
	res.dirs = []string{st.prod.dir, st.shadow.dir}
	res.copyMetrics, res.copyMetricsErr = st.copyMetrics()
	res.agentMetrics, res.agentMetErr = st.agentMetrics()
	if res.leaks, err = shadowLeaks(ctx, st.lab); err != nil {
		return nil, err
	}
	report(out, st, res)
	res.cmp = fetchComparison(ctx, st)
	reportComparison(out, st, res.cmp)
	if o := st.copier.Output(); res.verdict() != nil && o != "" && !cfg.verbose {
		fmt.Fprintf(out, "--- copier output (tail) ---\n%s\n", tail(o, 20))
	}
	if cfg.keep {
		keepUp(ctx, out, st)
	}
	return res, nil
}

// matchLogs reads both access logs and matches the shadow's requests to
// prod's, kind by kind.
func matchLogs(st *stage, ks []trafficKind, d *driver) (*demoResult, error) {
	prod, err := st.prod.requests()
	if err != nil {
		return nil, err
	}
	shadow, err := st.shadow.requests()
	if err != nil {
		return nil, err
	}
	res := &demoResult{labName: labPrefix + "-" + st.lab.ID}
	d.mu.Lock()
	for _, k := range ks {
		res.kinds = append(res.kinds, kindStat{key: k.key, title: k.title, sent: d.ok[k.key]})
	}
	d.mu.Unlock()
	idx := make(map[string]int)
	for i, k := range res.kinds {
		idx[k.key] = i
	}
	kindOf := func(path string) (int, bool) {
		key, _, _ := strings.Cut(strings.TrimPrefix(path, "/"), "/")
		i, ok := idx[key]
		return i, ok
	}

	want := make([]map[string]int, len(res.kinds)) // prod's requests not yet matched
	for i := range want {
		want[i] = make(map[string]int)
	}
	prodSrc := make(map[netip.Addr]bool)
	for _, e := range prod {
		res.prod++
		if !prodSrc[e.remote] {
			prodSrc[e.remote] = true
			res.prodSources = append(res.prodSources, e.remote)
		}
		if i, ok := kindOf(e.path); ok {
			res.kinds[i].prod++
			want[i][e.key()]++
		}
	}
	seen := make(map[netip.Addr]bool)
	for _, e := range shadow {
		res.shadow++
		if !seen[e.remote] {
			seen[e.remote] = true
			res.sources = append(res.sources, e.remote)
			if !lab.PoolV4.Contains(e.remote) && !lab.PoolV6.Contains(e.remote) {
				res.outOfPool = append(res.outOfPool, e.remote)
			}
		}
		i, ok := kindOf(e.path)
		if !ok {
			res.shadowOther++
			continue
		}
		k := &res.kinds[i]
		k.shadow++
		if want[i][e.key()] > 0 {
			want[i][e.key()]--
			k.copied++
			res.copied++
		}
	}
	for i := range res.kinds {
		k := &res.kinds[i]
		res.sent += k.sent
		for key, n := range want[i] {
			if n > 0 && len(k.missing) < maxErrsShown {
				k.missing = append(k.missing, key)
			}
		}
		sort.Strings(k.missing)
	}
	return res, nil
}

// report prints the outcome: per kind, sources, counters, final line.
func report(out io.Writer, st *stage, r *demoResult) {
	fmt.Fprintln(out)
	fmt.Fprintln(out, "requests: answered to the client; served by prod and by the shadow (their access logs);")
	fmt.Fprintln(out, "copied: prod's requests the shadow served with the same method, path and length, body included")
	w := len("total")
	for _, k := range r.kinds {
		w = max(w, len(k.title))
	}
	row := func(title, sent, prod, shadow, copied string) {
		fmt.Fprintf(out, "  %-*s %6s %6s %7s %7s\n", w, title, sent, prod, shadow, copied)
	}
	row("traffic", "client", "prod", "shadow", "copied")
	for _, k := range r.kinds {
		row(k.title, strconv.Itoa(k.sent), strconv.Itoa(k.prod), strconv.Itoa(k.shadow), pct(k.copied, k.prod))
	}
	row("total", strconv.Itoa(r.sent), strconv.Itoa(r.prod), strconv.Itoa(r.shadow), pct(r.copied, r.prod))
	if r.copied < r.prod {
		var miss []string
		for _, k := range r.kinds {
			for _, m := range k.missing {
				if len(miss) < maxErrsShown {
					miss = append(miss, m)
				}
			}
		}
		fmt.Fprintf(out, "  not copied (%d), for example: %s\n", r.prod-r.copied, strings.Join(miss, ", "))
	}
	if r.shadowOther > 0 {
		fmt.Fprintf(out, "  the shadow also served %d requests prod's traffic did not explain\n", r.shadowOther)
	}

	fmt.Fprintln(out)
	fmt.Fprintf(out, "prod saw the client's own addresses: %s\n", joinAddrs(r.prodSources, 4))
	if len(r.outOfPool) == 0 {
		fmt.Fprintf(out, "shadow saw %d source addresses, all in the client pools %s and %s\n", len(r.sources), lab.PoolV4, lab.PoolV6)
	} else {
		fmt.Fprintf(out, "shadow saw %d source addresses, %d OUTSIDE the client pools: %s\n",
			len(r.sources), len(r.outOfPool), joinAddrs(r.outOfPool, 6))
	}
	fmt.Fprintf(out, "  first few: %s\n", joinAddrs(firstPerFamily(r.sources, 3), 6))
	fmt.Fprintf(out, "packets from the shadow that reached the client: %d (its replies die at the assist)\n", r.leaks)

	fmt.Fprintln(out)
	if r.copyMetricsErr != nil {
		fmt.Fprintf(out, "copy daemon metrics: %v\n", r.copyMetricsErr)
	} else {
		m := r.copyMetrics
		ev := func(name string) int64 { return int64(m[`tcpshadow_copy_events_total{event="`+name+`"}`]) }
		fmt.Fprintf(out, "copy daemon counters (http://%s/metrics in %s):\n", st.copyMetricsAddr(), st.lab.Prod.Name())
		fmt.Fprintf(out, "  sessions  started %d, ended %s, %d ended ones still keep their flow's place\n",
			ev("sessions_started"), endedByReason(m), int64(m["tcpshadow_copy_sessions_active"]))
		fmt.Fprintf(out, "  packets   captured %d, sent to the shadow %d (%s), send errors %d, retransmits %d\n",
			ev("captured"), ev("packets_sent"), bytesStr(ev("bytes_sent")), ev("send_errors"), ev("retransmits"))
		fmt.Fprintf(out, "  replies   %d shadow reply headers from the agent\n", ev("replies"))
		var shed int64
		for _, s := range []string{"shed_queue_full", "shed_session_limit", "shed_memory", "shed_no_forged_port"} {
			shed += ev(s)
		}
		fmt.Fprintf(out, "  shed      %d\n", shed)
	}
	if r.agentMetErr != nil {
		fmt.Fprintf(out, "agent metrics: %v\n", r.agentMetErr)
	} else {
		m := r.agentMetrics
		fmt.Fprintf(out, "intercept agent: captured %d shadow replies, relayed %d\n",
			int64(m["tcpshadow_intercept_captured_total"]), int64(m["tcpshadow_intercept_relayed_total"]))
	}
	fmt.Fprintln(out)
	fmt.Fprintf(out, "prod served %d requests, shadow served %d (copied %s)\n", r.prod, r.shadow, pct(r.copied, r.prod))
}

// endedTotal sums the copier's sessions_ended counters.
func endedTotal(m map[string]float64) float64 {
	var n float64
	for k, v := range m {
		if strings.HasPrefix(k, "tcpshadow_copy_sessions_ended_total{") {
			n += v
		}
	}
	return n
}

// endedByReason renders "430 (closed 428, client_reset 2)".
func endedByReason(m map[string]float64) string {
	const prefix = `tcpshadow_copy_sessions_ended_total{reason="`
	type rc struct {
		reason string
		n      int64
	}
	var rs []rc
	var total int64
	for k, v := range m {
		if reason, ok := strings.CutPrefix(k, prefix); ok && v > 0 {
			rs = append(rs, rc{strings.TrimSuffix(reason, `"}`), int64(v)})
			total += int64(v)
		}
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].n > rs[j].n || rs[i].n == rs[j].n && rs[i].reason < rs[j].reason })
	var parts []string
	for _, r := range rs {
		parts = append(parts, fmt.Sprintf("%s %d", r.reason, r.n))
	}
	if len(parts) == 0 {
		return "0"
	}
	return fmt.Sprintf("%d (%s)", total, strings.Join(parts, ", "))
}

// pct renders part/whole rounded down to a tenth, so "100%" means all.
func pct(part, whole int) string {
	if whole == 0 {
		return "-"
	}
	p := math.Floor(float64(part)*1000/float64(whole)) / 10
	return strconv.FormatFloat(p, 'f', -1, 64) + "%"
}

func bytesStr(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// firstPerFamily returns up to k IPv4 then up to k IPv6 addresses, in
// order of appearance.
func firstPerFamily(addrs []netip.Addr, k int) []netip.Addr {
	var v4, v6 []netip.Addr
	for _, a := range addrs {
		if a.Is4() && len(v4) < k {
			v4 = append(v4, a)
		} else if !a.Is4() && len(v6) < k {
			v6 = append(v6, a)
		}
	}
	return append(v4, v6...)
}

func joinAddrs(addrs []netip.Addr, k int) string {
	if len(addrs) == 0 {
		return "none"
	}
	var s []string
	for i, a := range addrs {
		if i == k {
			s = append(s, fmt.Sprintf("… (%d more)", len(addrs)-k))
			break
		}
		s = append(s, a.String())
	}
	return strings.Join(s, ", ")
}

// watchShadowLeaks counts, in the client namespace, every packet from the
// shadow: none may ever arrive there.
func watchShadowLeaks(ctx context.Context, l *lab.Lab) error {
	rules := fmt.Sprintf(`table inet tslab {
	chain pre {
		type filter hook prerouting priority -300; policy accept;
		ip saddr %s counter
		ip6 saddr %s counter
	}
}`, lab.ShadowV4, lab.ShadowV6)
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := l.Client.Command(cctx, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft in %s: %w: %s", l.Client.Name(), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// shadowLeaks returns how many packets from the shadow reached the client.
func shadowLeaks(ctx context.Context, l *lab.Lab) (int, error) {
	out, err := l.Client.Run(ctx, "nft", "list", "table", "inet", "tslab")
	if err != nil {
		return 0, err
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
	return total, nil
}

// keepUp prints how to look at the lab and waits for Ctrl-C.
func keepUp(ctx context.Context, out io.Writer, st *stage) {
	ns := func(n *lab.NS) string { return n.Name() }
	l := st.lab
	fmt.Fprintf(out, `
the lab stays up until Ctrl-C. Namespaces:
  client  %-28s 198.18.0.2, 2001:2::2
  prod    %-28s eth0 198.18.0.1, 2001:2::1 (to the client); eth1 198.18.1.1 (segment)
  shadow  %-28s 198.18.1.2, 2001:2:0:1::2
  assist  %-28s 198.18.1.3, 2001:2:0:1::3
  switch  %-28s bridge br0
look at the traffic (in another terminal, as root):
  ip netns exec %s tcpdump -ni eth0 tcp port 80            # client <-> prod
  ip netns exec %s tcpdump -ni eth0 tcp port 80          # copies, from pool addresses
  ip netns exec %s tcpdump -ni eth0 'tcp and src port 80'  # shadow replies, dying at the assist
send a request yourself, and watch both access logs:
  ip netns exec %s curl -s --noproxy '*' http://198.18.0.1/hello
  ip netns exec %s curl -s --noproxy '*' 'http://[2001:2::1]/hello'
  tail -f %s %s
the copy daemon's metrics:
  ip netns exec %s curl -s --noproxy '*' http://%s/metrics | grep '^tcpshadow_copy'
`, ns(l.Client), ns(l.Prod), ns(l.Shadow), ns(l.Assist), ns(l.Switch),
		ns(l.Prod), ns(l.Shadow), ns(l.Assist),
		ns(l.Client), ns(l.Client), st.prod.accessLog(), st.shadow.accessLog(),
		ns(l.Prod), st.copyMetricsAddr())
	<-ctx.Done()
}

// teardown closes the stage and says so.
func teardown(st *stage, out io.Writer) error {
	fmt.Fprintf(out, "tearing down: stopping %s (by pid); deleting namespaces %s-*\n",
		strings.Join(st.procs(), ", "), labPrefix+"-"+st.lab.ID)
	t0 := time.Now()
	if err := st.close(); err != nil {
		fmt.Fprintf(out, "teardown incomplete: %v\n", err)
		return fmt.Errorf("tear down: %w", err)
	}
	fmt.Fprintf(out, "torn down in %v: processes stopped, namespaces and temp dirs removed\n", time.Since(t0).Round(time.Millisecond))
	return nil
}
