package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

const (
	keepAliveConns   = 50
	connPerReqFlight = 64 // one-connection-per-request: connections in flight at most
	maxClientAddrs   = 32 // 198.18.0.2 and 198.18.0.3..198.18.0.33
	benchCatchUp     = 20 * time.Second
	benchStall       = 2 * time.Second // shadow count unchanged this long: give up waiting
	benchSettle      = 5 * time.Second // bound on the copier's sessions leaving between steps
	idleHold         = 2 * time.Second
	maxIdleSessions  = 900 // nginx's worker_connections is 1024
)

type benchOptions struct {
	bin, nginx, out    string
	step               time.Duration
	stepSet            bool // --step given: --smoke has its own default
	smoke              bool
	kaRates, connRates string
	bulkRates, h2Rates string
	compareRate        int
	multiplyRate       int
	multiplyOnly       bool
	addrs              string
	idleSessions       int
	replayRate         int
	replaySpeeds       string
	baseline           bool
	copyFlags          []string
	agentFlags         []string
	verbose            bool
	modes              string
	modeRate           int
	modeBulk           string
	ctoolDir           string
	vsKARates          string
	vsConnRates        string
	vsConnAddrs        int
	vsRuns             int
	plot               string
	profileDir         string
}

// series is one traffic shape from one number of client addresses, over
// offered rates (0: as fast as possible).
type series struct {
	shape shape
	addrs int
	conns int
	rates []int
}

func (s series) title() string {
	what := fmt.Sprintf("keep-alive HTTP, %d connections", s.conns)
	if s.shape == connPerReq {
		what = fmt.Sprintf("one connection per request, at most %d in flight", s.conns)
	}
	if s.addrs == 1 {
		return what + ", 1 client address"
	}
	return fmt.Sprintf("%s, %d client addresses", what, s.addrs)
}

// benchConfig is the validated form of benchOptions.
type benchConfig struct {
	bin, nginx   string
	out          string // markdown file; "" writes the tables to stdout only
	step         time.Duration
	smoke        bool
	baseline     bool // measure prod alone first
	series       []series
	idleSessions int       // 0: skip the idle-session memory measurement
	bulkRates    []int64   // bits/s of the bulk steps (0: max)
	h2Rates      []int     // requests/s of the HTTP/2 steps (0: max)
	compareRate  int       // req/s of the steps with and without comparison; -1: none
	compareRuns  int       // steps each, with and without
	multiplyRate int       // req/s of the steps at --multiply 1 and 10; -1: none
	multiplyOnly bool      // run only those
	replayRate   int       // requests/s of the step the replays play
	replaySpeeds []float64 // of the replays; none: no replay steps
	copyArgs     []string  // extra copy flags, appended
	agentArgs    []string  // extra intercept flags, appended
	verbose      bool
	// modes are the deployment modes measured after the rest
	// (benchmodes.go): a keep-alive step at modeRate and bulk steps at
	// modeBulk bits/s (0: max) each.
	modes    []string
	modeRate int
	modeBulk []int64
	// ctool, when set, runs the vs steps with both tools, vsRuns times
	// each, alternated (benchctool.go).
	ctool  *ctool
	vs     []series
	vsRuns int
	plot   string // the SVG written beside out; "": none
	// profileDir, when set, gets the copier's CPU profile of each of
	// tcpshadow's steps (benchprofile.go).
	profileDir string
}

func newBenchCmd() *cobra.Command {
	o := &benchOptions{}
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure the copier between real nginx servers and write a markdown report",
		Long: `bench builds a sealed lab like demo, then drives open-loop HTTP load from the
client namespace to prod's nginx in steps of offered rate, for keep-alive
connections and for one connection per request, from one and from 32 client
addresses. Every step runs once with prod alone (no copier) and once with the
agent and copy daemon running. Per step it reports the rate prod answered,
prod's latency (p50, p99) with and without the copier, the copy ratio (shadow
requests / prod requests, from the nginx access logs), the CPU time of the
copier and the agent (from /proc) per copied request, their peak RSS, the
copier's shed and pcap-drop counters, and where the machine's CPU went.

--smoke runs one short step per shape, without the baseline, and writes to
stdout (or --out). Every step is bounded by --step plus 5 s; waits for the
shadow are bounded too; everything is torn down on exit, Ctrl-C included.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.stepSet = cmd.Flags().Changed("step")
			cfg, err := o.config()
			if err != nil {
				return err
			}
			_, err = runBench(cmd.Context(), cfg, cmd.OutOrStdout())
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.bin, "bin", "", "tcpshadow binary to run (required; make build writes bin/tcpshadow)")
	f.StringVar(&o.nginx, "nginx", defaultNginx, "nginx binary (Debian's nginx-light)")
	f.StringVar(&o.out, "out", "", "write the markdown report to this file too (BENCHMARKS.md)")
	f.DurationVar(&o.step, "step", 10*time.Second, "length of each load step (1s to 2m)")
	f.BoolVar(&o.smoke, "smoke", false, "one short step per shape at 500 req/s, no baseline")
	f.StringVar(&o.kaRates, "keepalive-rates", "1000,5000,10000,20000,max", "offered request rates of the keep-alive steps")
	f.StringVar(&o.connRates, "conn-rates", "1000,3000,5000,7000,max", "offered connection rates of the one-connection-per-request steps")
	f.StringVar(&o.bulkRates, "bulk-rates", "500M,1G,2G,max", "offered bit rates of the single-stream upload steps")
	f.StringVar(&o.h2Rates, "h2-rates", "1000,4000,max", "offered request rates of the HTTP/2 steps")
	f.IntVar(&o.compareRate, "compare-rate", 10000, "offered request rate of the keep-alive steps run with and without comparison (0: max, -1: skip them)")
	f.IntVar(&o.multiplyRate, "multiply-rate", 1000, "offered request rate of the keep-alive steps run with the copier at --multiply 1 and 10 (0: max, -1: skip them)")
	f.BoolVar(&o.multiplyOnly, "multiply-only", false, "run only the --multiply 1 and 10 steps (a quick measure of a copy's cost)")
	f.StringVar(&o.addrs, "addrs", "1,32", fmt.Sprintf("numbers of client addresses to run each shape from (1 to %d)", maxClientAddrs))
	f.BoolVar(&o.baseline, "baseline", true, "measure every step with prod alone first")
	f.StringArrayVar(&o.copyFlags, "copy-flag", nil, "extra flag for tcpshadow copy, e.g. --copy-flag=--snaplen=2048 (repeatable)")
	f.StringArrayVar(&o.agentFlags, "agent-flag", nil, "extra flag for tcpshadow intercept, e.g. --agent-flag=--flush-delay=1ms (repeatable)")
	f.IntVar(&o.replayRate, "replay-rate", 2000, "offered request rate of the keep-alive step recorded for the replays")
	f.StringVar(&o.replaySpeeds, "replay-speeds", "1,2,5,10,20,50", "speeds the recorded step is replayed at (empty: no replay steps)")
	f.IntVar(&o.idleSessions, "idle-sessions", 800, fmt.Sprintf("idle connections for the memory measurement (0 skips it; at most %d)", maxIdleSessions))
	f.BoolVarP(&o.verbose, "verbose", "v", false, "show the lab's log and the daemons' output")
	f.StringVar(&o.modes, "modes", strings.Join(allModes, ","), "deployment modes measured in the two-host lab, each with a keep-alive step at --mode-rate and a bulk upload (\"\" skips them)")
	f.IntVar(&o.modeRate, "mode-rate", 10000, "offered keep-alive request rate of the modes' step")
	f.StringVar(&o.modeBulk, "mode-bulk-rates", "200M,500M,1G", "offered bit rates of the modes' bulk upload steps")
	f.StringVar(&o.ctoolDir, "tcpcopy-dir", os.Getenv("TCPCOPY_DIR"), "a build of the C tool (tcpcopy and intercept in DIR, DIR/sbin or DIR/objs; default $TCPCOPY_DIR): run its steps with both tools")
	f.StringVar(&o.vsKARates, "vs-keepalive-rates", "1000,10000,max", "keep-alive rates (1 address) run by both tools, with --tcpcopy-dir")
	f.StringVar(&o.vsConnRates, "vs-conn-rates", "1000,7000", "one-connection-per-request rates run by both tools, with --tcpcopy-dir")
	f.IntVar(&o.vsConnAddrs, "vs-conn-addrs", maxClientAddrs, "client addresses of the one-connection-per-request steps run by both tools")
	f.IntVar(&o.vsRuns, "vs-runs", 1, "runs of each step by each tool, alternated (1 to 5)")
	f.StringVar(&o.profileDir, "profile-dir", "", "record the copier's CPU profile over each tcpshadow step into this directory (runs it with --debug-pprof)")
	f.StringVar(&o.plot, "plot", "docs/bench-cpu.svg", "with --out, write the SVG plot of CPU a request and copy ratio against offered rate here (\"\": none)")
	return cmd
}

// config validates the flags; every error names its flag.
func (o *benchOptions) config() (*benchConfig, error) {
	bin, ngx, err := labBinaries(o.bin, o.nginx)
	if err != nil {
		return nil, err
	}
	if o.step < time.Second || o.step > 2*time.Minute {
		return nil, fmt.Errorf("--step %v: want 1s to 2m", o.step)
	}
	if o.idleSessions < 0 || o.idleSessions > maxIdleSessions {
		return nil, fmt.Errorf("--idle-sessions %d: want 0 to %d", o.idleSessions, maxIdleSessions)
	}
	for name, fls := range map[string][]string{"--copy-flag": o.copyFlags, "--agent-flag": o.agentFlags} {
		for _, fl := range fls {
			if !strings.HasPrefix(fl, "--") {
				return nil, fmt.Errorf("%s %q: want a long flag, --name=value", name, fl)
			}
		}
	}
	cfg := &benchConfig{bin: bin, nginx: ngx, out: o.out, step: o.step, baseline: o.baseline,
		idleSessions: o.idleSessions, copyArgs: o.copyFlags, agentArgs: o.agentFlags, verbose: o.verbose,
		modeRate: o.modeRate}
	if o.multiplyOnly {
		// The steps need the daemons up and nothing else.
		cfg.multiplyOnly, cfg.baseline, cfg.idleSessions = true, false, 0
	}
	if o.out != "" {
		cfg.plot = o.plot
	}
	if cfg.profileDir = o.profileDir; cfg.profileDir != "" {
		if err := os.MkdirAll(cfg.profileDir, 0o755); err != nil {
			return nil, fmt.Errorf("--profile-dir: %w", err)
		}
	}
	if cfg.modes, err = parseModes(o.modes); err != nil {
		return nil, fmt.Errorf("--modes: %w", err)
	}
	if o.modeRate < 1 || o.modeRate > maxPerSecond {
		return nil, fmt.Errorf("--mode-rate %d: want 1 to %d", o.modeRate, maxPerSecond)
	}
	if cfg.modeBulk, err = parseBitRates(o.modeBulk); err != nil {
		return nil, fmt.Errorf("--mode-bulk-rates: %w", err)
	}
	if o.ctoolDir != "" && !o.smoke {
		if cfg.ctool, err = findCTool(context.Background(), o.ctoolDir); err != nil {
			return nil, fmt.Errorf("--tcpcopy-dir: %w", err)
		}
		ka, err := parseRates(o.vsKARates)
		if err != nil {
			return nil, fmt.Errorf("--vs-keepalive-rates: %w", err)
		}
		conn, err := parseRates(o.vsConnRates)
		if err != nil {
			return nil, fmt.Errorf("--vs-conn-rates: %w", err)
		}
		if o.vsConnAddrs < 1 || o.vsConnAddrs > maxClientAddrs {
			return nil, fmt.Errorf("--vs-conn-addrs %d: want 1 to %d", o.vsConnAddrs, maxClientAddrs)
		}
		if o.vsRuns < 1 || o.vsRuns > 5 {
			return nil, fmt.Errorf("--vs-runs %d: want 1 to 5", o.vsRuns)
		}
		cfg.vs, cfg.vsRuns = vsSeries(ka, conn, o.vsConnAddrs), o.vsRuns
	}
	if o.smoke {
		cfg.smoke, cfg.baseline, cfg.idleSessions = true, false, 0
		if !o.stepSet {
			cfg.step = 2 * time.Second
		}
		cfg.series = smokeSeries()
		cfg.bulkRates, cfg.h2Rates = []int64{200e6}, []int{500}
		cfg.compareRate, cfg.compareRuns = 1000, 1
		cfg.multiplyRate = 500
		cfg.replayRate, cfg.replaySpeeds = 500, []float64{1, 4}
		cfg.modeRate, cfg.modeBulk = 500, []int64{200e6}
	} else {
		if o.compareRate < -1 {
			return nil, fmt.Errorf("--compare-rate %d: want a rate, 0 for max or -1", o.compareRate)
		}
		cfg.compareRate, cfg.compareRuns = o.compareRate, compareCostRuns
		if o.multiplyRate < -1 || o.multiplyRate > maxPerSecond {
			return nil, fmt.Errorf("--multiply-rate %d: want a rate up to %d, 0 for max or -1", o.multiplyRate, maxPerSecond)
		}
		cfg.multiplyRate = o.multiplyRate
		if cfg.replaySpeeds, err = parseSpeeds(o.replaySpeeds); err != nil {
			return nil, fmt.Errorf("--replay-speeds: %w", err)
		}
		if o.replayRate < 1 || o.replayRate > 100000 {
			return nil, fmt.Errorf("--replay-rate %d: want 1 to 100000", o.replayRate)
		}
		cfg.replayRate = o.replayRate
		if cfg.bulkRates, err = parseBitRates(o.bulkRates); err != nil {
			return nil, fmt.Errorf("--bulk-rates: %w", err)
		}
		if cfg.h2Rates, err = parseRates(o.h2Rates); err != nil {
			return nil, fmt.Errorf("--h2-rates: %w", err)
		}
		ka, err := parseRates(o.kaRates)
		if err != nil {
			return nil, fmt.Errorf("--keepalive-rates: %w", err)
		}
		conn, err := parseRates(o.connRates)
		if err != nil {
			return nil, fmt.Errorf("--conn-rates: %w", err)
		}
		addrs, err := parseAddrs(o.addrs)
		if err != nil {
			return nil, fmt.Errorf("--addrs: %w", err)
		}
		for _, a := range addrs {
			if len(ka) > 0 {
				cfg.series = append(cfg.series, series{shape: keepAlive, addrs: a, conns: keepAliveConns, rates: ka})
			}
		}
		for _, a := range addrs {
			if len(conn) > 0 {
				cfg.series = append(cfg.series, series{shape: connPerReq, addrs: a, conns: connPerReqFlight, rates: conn})
			}
		}
		if len(cfg.series) == 0 && len(cfg.modes) == 0 && len(cfg.vs) == 0 {
			return nil, errors.New("--keepalive-rates, --conn-rates and --modes are all empty, and no --tcpcopy-dir: nothing to run")
		}
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("bench needs root to create network namespaces")
	}
	return cfg, nil
}

// smokeSeries is --smoke's load: 500/s of each shape, the one-connection
// one from 32 addresses so that path is exercised too.
func smokeSeries() []series {
	return []series{
		{shape: keepAlive, addrs: 1, conns: keepAliveConns, rates: []int{500}},
		{shape: connPerReq, addrs: maxClientAddrs, conns: connPerReqFlight, rates: []int{500}},
	}
}

// parseRates reads "1000,5k,max" (max: as fast as possible, 0); "" skips
// the shape.
func parseRates(s string) ([]int, error) {
	var rates []int
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "max" {
			rates = append(rates, 0)
			continue
		}
		mul := 1
		if v, ok := strings.CutSuffix(f, "k"); ok {
			f, mul = v, 1000
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 || n*mul > maxPerSecond {
			return nil, fmt.Errorf("rate %q: want 1 to %d, or max", f, maxPerSecond)
		}
		rates = append(rates, n*mul)
	}
	return rates, nil
}

func parseAddrs(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > maxClientAddrs {
			return nil, fmt.Errorf("%q: want 1 to %d", f, maxClientAddrs)
		}
		out = append(out, n)
	}
	return out, nil
}

// clientAddrs returns the client's first n addresses: its own, then
// 198.18.0.3 onwards.
func clientAddrs(n int) []netip.Addr {
	addrs := []netip.Addr{lab.ClientV4}
	a := lab.ClientV4
	for len(addrs) < n {
		a = a.Next()
		addrs = append(addrs, a)
	}
	return addrs
}

// addClientAddrs gives the client's eth0 its extra addresses, in the
// client net (prod reaches them on-link).
func addClientAddrs(ns *lab.NS, extra []netip.Addr) error {
	h := ns.Handle()
	if h == nil {
		return lab.ErrClosed
	}
	link, err := h.LinkByName(lab.HostLink)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", lab.HostLink, ns.Name(), err)
	}
	for _, a := range extra {
		if !lab.ClientNetV4.Contains(a) {
			return fmt.Errorf("client address %s outside %s", a, lab.ClientNetV4)
		}
		p := netip.PrefixFrom(a, lab.ClientNetV4.Bits())
		nla := &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}
		if err := h.AddrAdd(link, nla); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add %s to %s in %s: %w", p, lab.HostLink, ns.Name(), err)
		}
	}
	return nil
}

// benchResult is a whole run.
type benchResult struct {
	machine  machine
	cfg      *benchConfig
	series   []seriesResult
	bulk     []*bulkResult
	h2       []*h2Result
	compare  *compareCost
	multiply *multiplyCost
	replay   []*replayResult
	idle     *idleResult
	idleCPU  idleCPU
	took     time.Duration
	labName  string
	warnings []string
	modes    []*modeResult
	vs       []*vsStep
	plotMD   string // the plot's section, once written
}

type seriesResult struct {
	series
	alone, copied []*stepResult // by rate, as series.rates
}

// runBench runs the whole benchmark, writing progress and the report to
// out, and the report to cfg.out too. The lab is torn down before it
// returns, whatever happens.
func runBench(ctx context.Context, cfg *benchConfig, out io.Writer) (_ *benchResult, err error) {
	start := time.Now()
	level := slog.LevelWarn
	if cfg.verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	res := &benchResult{cfg: cfg, machine: describeMachine(ctx, cfg.bin, cfg.nginx)}
	if len(cfg.series) == 0 && len(cfg.vs) == 0 {
		return runModesOnly(ctx, cfg, res, start, out, log)
	}

	st, err := upStage(ctx, stageConfig{bin: cfg.bin, nginx: cfg.nginx, noDaemons: cfg.baseline, pprof: cfg.profileDir != "", copyArgs: cfg.copyArgs, agentArgs: cfg.agentArgs, progress: out, log: log})
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("interrupted: %w", err)
		}
		fmt.Fprintln(out, "set-up failed; everything it started is torn down")
		return nil, fmt.Errorf("set up bench: %w", err)
	}
	res.labName = labPrefix + "-" + st.lab.ID
	defer func() {
		if ctx.Err() != nil {
			fmt.Fprintln(out, "interrupted")
		}
		err = errors.Join(err, teardown(st, out))
		fmt.Fprintf(out, "bench took %v\n", time.Since(start).Round(time.Second))
	}()
	if cfg.verbose {
		defer func() {
			if st.copier != nil {
				fmt.Fprintf(out, "--- copier output (tail) ---\n%s\n--- agent output (tail) ---\n%s\n",
					tail(st.copier.Output(), 40), tail(st.agent.Output(), 40))
			}
		}()
	}
	most := 1
	for _, s := range append(append([]series{}, cfg.series...), cfg.vs...) {
		most = max(most, s.addrs)
	}
	if most > 1 {
		if err := addClientAddrs(st.lab.Client, clientAddrs(most)[1:]); err != nil {
			return nil, err
		}
	}
	d, err := st.lab.Client.NewDialer()
	if err != nil {
		return nil, err
	}
	defer d.Close() // before the teardown: its thread holds the client namespace
	b := newBencher(st, d, cfg, out)

	for _, s := range cfg.series {
		res.series = append(res.series, seriesResult{series: s})
	}
	if cfg.baseline {
		fmt.Fprintln(out, "\nprod alone (no agent, no copier):")
		for i := range res.series {
			sr := &res.series[i]
			for _, rate := range sr.rates {
				r, err := b.step(ctx, sr.series, rate, false)
				if err != nil {
					return nil, err
				}
				sr.alone = append(sr.alone, r)
			}
		}
		t0 := time.Now()
		if err := st.startDaemons(ctx, stageConfig{bin: cfg.bin, copyArgs: cfg.copyArgs, agentArgs: cfg.agentArgs}); err != nil {
			return nil, fmt.Errorf("start daemons: %w", err)
		}
		fmt.Fprintf(out, "agent and copier up (%v)\n", time.Since(t0).Round(10*time.Millisecond))
	}
	b.daemonsUp()
	if cfg.multiplyOnly {
		if res.multiply, err = b.measureMultiplyCost(ctx, cfg.multiplyRate); err != nil {
			return nil, err
		}
		return finishBench(res, cfg, b, start, out)
	}
	if res.idleCPU, err = b.measureIdleCPU(ctx); err != nil {
		return nil, err
	}
	if cfg.idleSessions > 0 {
		// First, while the copier's heap holds nothing else.
		res.idle, err = b.idleMemory(ctx, cfg.idleSessions, clientAddrs(most))
		if err != nil {
			return nil, err
		}
	}
	fmt.Fprintln(out, "\nwith the agent and the copier:")
	for i := range res.series {
		sr := &res.series[i]
		for _, rate := range sr.rates {
			r, err := b.step(ctx, sr.series, rate, true)
			if err != nil {
				return nil, err
			}
			sr.copied = append(sr.copied, r)
		}
	}
	if cfg.ctool != nil && len(cfg.vs) > 0 {
		if err := st.stopDaemons(); err != nil {
			return nil, fmt.Errorf("stop daemons: %w", err)
		}
		b.noSettle = true
		res.vs, err = b.versus(ctx, cfg.ctool, cfg.vs, cfg.vsRuns)
		b.noSettle = false
		if err != nil {
			return nil, err
		}
		versusProgress(out, res.vs)
		if err := st.startDaemons(ctx, stageConfig{bin: cfg.bin, copyArgs: cfg.copyArgs, agentArgs: cfg.agentArgs}); err != nil {
			return nil, fmt.Errorf("restart daemons: %w", err)
		}
		b.daemonsUp()
	}
	for _, rate := range cfg.bulkRates {
		r, err := b.bulkStep(ctx, rate)
		if err != nil {
			return nil, err
		}
		res.bulk = append(res.bulk, r)
	}
	for _, rate := range cfg.h2Rates {
		r, err := b.h2Step(ctx, rate)
		if err != nil {
			return nil, err
		}
		res.h2 = append(res.h2, r)
	}
	if cfg.compareRuns > 0 && cfg.compareRate >= 0 {
		if res.compare, err = b.measureCompareCost(ctx, cfg.compareRate); err != nil {
			return nil, err
		}
	}
	if cfg.multiplyRate >= 0 {
		if res.multiply, err = b.measureMultiplyCost(ctx, cfg.multiplyRate); err != nil {
			return nil, err
		}
	}
	if st.copier.Exited() || st.agent.Exited() {
		return nil, fmt.Errorf("a daemon exited during the run:\n%s\n%s", tail(st.copier.Output(), 10), tail(st.agent.Output(), 10))
	}
	if res.modes, err = runModes(ctx, cfg, out, log); err != nil {
		return nil, err
	}
	if len(cfg.replaySpeeds) > 0 { // last: it stops the copier
		if res.replay, err = b.replaySteps(ctx, cfg.replayRate, cfg.replaySpeeds); err != nil {
			return nil, err
		}
	}
	return finishBench(res, cfg, b, start, out)
}

// finishBench renders the report to out and cfg.out.
func finishBench(res *benchResult, cfg *benchConfig, b *bencher, start time.Time, out io.Writer) (*benchResult, error) {
	res.machine.loadEnd = loadavg()
	res.took = time.Since(start)
	res.warnings = b.warnings
	var err error
	if res.plotMD, err = writePlot(res, cfg.plot, cfg.out); err != nil {
		return nil, err
	}
	md := renderReport(res)
	fmt.Fprintf(out, "\n%s\n", md)
	if cfg.out != "" {
		if err := os.WriteFile(cfg.out, []byte(md), 0o644); err != nil {
			return nil, fmt.Errorf("--out: %w", err)
		}
		fmt.Fprintf(out, "wrote %s\n", cfg.out)
	}
	return res, nil
}
