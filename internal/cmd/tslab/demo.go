package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
