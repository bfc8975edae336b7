package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

// The processes whose CPU time a step records.
const (
	roleLoad   = "load generator"
	roleProd   = "nginx prod"
	roleShadow = "nginx shadow"
	roleCopier = "copier"
	roleAgent  = "agent"
)

var cpuRoles = []string{roleLoad, roleProd, roleShadow, roleCopier, roleAgent}

var prodBody = []byte("hello from prod\n")

// bencher runs steps on a stage and keeps what it needs between them.
type bencher struct {
	st                 *stage
	d                  *lab.Dialer
	cfg                *benchConfig
	out                io.Writer
	prodLog, shadowLog *logTally
	pids               map[string][]int // role → its processes
	next               int              // step number, for the paths
	warnings           []string
	noSettle           bool // the daemons stop after each step (versus)
	// copies is how many times the copier sends each request (its
	// --multiply; 0 means 1): the shadow catches up at that many.
	copies int
}

func newBencher(st *stage, d *lab.Dialer, cfg *benchConfig, out io.Writer) *bencher {
	b := &bencher{st: st, d: d, cfg: cfg, out: out,
		prodLog: newLogTally(st.prod.accessLog()), shadowLog: newLogTally(st.shadow.accessLog()),
		pids: map[string][]int{roleLoad: {os.Getpid()}}}
	for role, n := range map[string]*nginx{roleProd: st.prod, roleShadow: st.shadow} {
		master := n.proc.PID()
		b.pids[role] = append([]int{master}, childrenOf(master)...)
	}
	if st.copier != nil {
		b.daemonsUp()
	}
	return b
}

// daemonsUp adds the agent and the copier once they run.
func (b *bencher) daemonsUp() {
	b.pids[roleCopier] = []int{b.st.copier.PID()}
	b.pids[roleAgent] = []int{b.st.agent.PID()}
}

func (b *bencher) warn(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	b.warnings = append(b.warnings, msg)
	fmt.Fprintf(b.out, "  warning: %s\n", msg)
}

// snapshot is the state of the machine and the daemons at one moment.
type snapshot struct {
	cpu           map[string]time.Duration
	busy, total   time.Duration // all CPUs
	copyM, agentM map[string]float64
}

func (b *bencher) snap(metrics bool) (snapshot, error) {
	s := snapshot{cpu: make(map[string]time.Duration)}
	for role, pids := range b.pids {
		for _, pid := range pids {
			c, err := procCPU(pid)
			if err != nil {
				return s, fmt.Errorf("cpu of %s: %w", role, err)
			}
			s.cpu[role] += c
		}
	}
	var err error
	if s.busy, s.total, err = machineCPU(); err != nil {
		return s, err
	}
	if metrics && b.st.copier != nil && !b.st.ctool {
		if s.copyM, err = b.st.copyMetrics(); err != nil {
			return s, fmt.Errorf("scrape copier: %w", err)
		}
		if s.agentM, err = b.st.agentMetrics(); err != nil {
			return s, fmt.Errorf("scrape agent: %w", err)
		}
	}
	return s, nil
}

// stepResult is one step: one shape, address count and offered rate, with
// or without the copier.
type stepResult struct {
	key      string
	rate     int // offered; 0: as fast as possible
	copier   bool
	load     *loadResult
	prod     int           // requests in prod's access log
	shadow   int           // requests in the shadow's
	caughtUp bool          // the shadow had every request prod had
	catchUp  time.Duration // after the load, until the counts were final

	window      time.Duration            // the load's, between the CPU snapshots
	cpu         map[string]time.Duration // during the load
	busy, total time.Duration            // the machine's, during the load
	// The daemons' CPU from the step's start until the shadow caught up:
	// copying may finish after the load.
	copierCPU, agentCPU time.Duration
	copierHWM, agentHWM int64              // peaks since start
	copierRSS           int64              // at the end of the step
	copyDelta, agentDel map[string]float64 // counter increases over the step
}

// copiedN is how many of prod's requests the shadow served.
func (r *stepResult) copiedN() int { return min(r.shadow, r.prod) }

// step runs one step and waits for the shadow to catch up and the copier's
// sessions to leave.
func (b *bencher) step(ctx context.Context, s series, rate int, withCopier bool) (*stepResult, error) {
	b.next++
	key := "b" + strconv.Itoa(b.next)
	spec := loadSpec{shape: s.shape, rate: rate, conns: s.conns, target: b.st.prodV4,
		prefix: "/" + key, dur: b.cfg.step, want: prodBody}
	if s.addrs > 1 {
		spec.locals = clientAddrs(s.addrs)
	}
	before, err := b.snap(withCopier)
	if err != nil {
		return nil, err
	}
	wait := func() {}
	if withCopier && !b.st.ctool && b.cfg.profileDir != "" {
		wait = b.startProfile(ctx, fmt.Sprintf("%s-%s-%daddr-%s", key, strings.ReplaceAll(shortShape(s.shape), "/", ""), s.addrs, rateStr(rate)), b.cfg.step)
	}
	t0 := time.Now()
	load := runLoad(ctx, b.d, spec)
	wait()
	if ctx.Err() != nil {
		return nil, fmt.Errorf("interrupted: %w", ctx.Err())
	}
	during, err := b.snap(false)
	if err != nil {
		return nil, err
	}
	r := &stepResult{key: key, rate: rate, copier: withCopier, load: load, cpu: make(map[string]time.Duration),
		window: time.Since(t0), busy: during.busy - before.busy, total: during.total - before.total}
	for _, role := range cpuRoles {
		r.cpu[role] = during.cpu[role] - before.cpu[role]
	}
	t0 = time.Now()
	if err := b.waitLogs(ctx, r, withCopier); err != nil {
		return nil, err
	}
	r.catchUp = time.Since(t0)
	if withCopier {
		after, err := b.snap(true)
		if err != nil {
			return nil, err
		}
		r.copierCPU = after.cpu[roleCopier] - before.cpu[roleCopier]
		r.agentCPU = after.cpu[roleAgent] - before.cpu[roleAgent]
		r.copyDelta = deltas(after.copyM, before.copyM)
		r.agentDel = deltas(after.agentM, before.agentM)
		if r.copierHWM, r.copierRSS, err = procMem(b.st.copier.PID()); err != nil {
			return nil, fmt.Errorf("copier memory: %w", err)
		}
		if r.agentHWM, _, err = procMem(b.st.agent.PID()); err != nil {
			return nil, fmt.Errorf("agent memory: %w", err)
		}
		if !r.caughtUp {
			b.warn("%s: the shadow stopped at %d of prod's %d requests", stepName(s, rate), r.shadow, r.prod)
		}
		if err := b.settle(ctx, benchSettle); err != nil {
			return nil, err
		}
	} else if r.shadow > 0 {
		b.warn("%s: the shadow served %d requests with no copier running", stepName(s, rate), r.shadow)
	}
	fmt.Fprintf(b.out, "  %s\n", progressLine(s, r))
	return r, nil
}

// waitLogs waits until prod's access log has every answered request and,
// with the copier, the shadow's has as many as prod's; bounded by
// benchCatchUp, and by benchStall without progress.
func (b *bencher) waitLogs(ctx context.Context, r *stepResult, withCopier bool) error {
	start := time.Now()
	lastShadow, lastChange := -1, start
	for {
		if err := b.prodLog.update(); err != nil {
			return err
		}
		if err := b.shadowLog.update(); err != nil {
			return err
		}
		r.prod, r.shadow = b.prodLog.counts[r.key], b.shadowLog.counts[r.key]
		prodDone := r.prod >= r.load.ok
		if prodDone && (!withCopier || r.shadow >= r.prod*max(b.copies, 1)) {
			r.caughtUp = true
			return nil
		}
		now := time.Now()
		if r.shadow != lastShadow {
			lastShadow, lastChange = r.shadow, now
		}
		if now.Sub(start) > benchCatchUp || (prodDone || !withCopier) && now.Sub(lastChange) > benchStall {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("interrupted: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// settle waits, bounded, for the copier's sessions of the last step to
// leave its table, so they do not cost the next step.
func (b *bencher) settle(ctx context.Context, bound time.Duration) error {
	if b.noSettle || b.st.ctool {
		return nil
	}
	err := poll(ctx, bound, func() (bool, error) {
		m, err := b.st.copyMetrics()
		return err == nil && m["tcpshadow_copy_sessions_active"] == 0, nil
	})
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted: %w", ctx.Err())
	}
	if err != nil {
		m, _ := b.st.copyMetrics()
		b.warn("copier still holds %v sessions %v after the step", m["tcpshadow_copy_sessions_active"], bound)
	}
	return nil
}

// idleCPU is the daemons' CPU use with no traffic at all.
type idleCPU struct {
	window        time.Duration
	copier, agent time.Duration
}

// measureIdleCPU measures the daemons' CPU over 2 × idleHold without
// traffic: the floor every request shares at low rates.
func (b *bencher) measureIdleCPU(ctx context.Context) (idleCPU, error) {
	before, err := b.snap(false)
	if err != nil {
		return idleCPU{}, err
	}
	t0 := time.Now()
	select {
	case <-ctx.Done():
		return idleCPU{}, fmt.Errorf("interrupted: %w", ctx.Err())
	case <-time.After(2 * idleHold):
	}
	after, err := b.snap(false)
	if err != nil {
		return idleCPU{}, err
	}
	r := idleCPU{window: time.Since(t0), copier: after.cpu[roleCopier] - before.cpu[roleCopier], agent: after.cpu[roleAgent] - before.cpu[roleAgent]}
	fmt.Fprintf(b.out, "idle daemons: copier %s, agent %s of a core over %v\n", pctOf(r.copier, r.window), pctOf(r.agent, r.window), r.window.Round(100*time.Millisecond))
	return r, nil
}

// idleResult is the idle-session memory measurement.
type idleResult struct {
	opened, errs       int
	sessions           float64 // copier sessions added
	rssBefore, rssWith int64
	firstErr           string
}

func (r *idleResult) perSession() float64 {
	if r.sessions <= 0 {
		return 0
	}
	return float64(r.rssWith-r.rssBefore) / r.sessions
}

// idleMemory opens n keep-alive connections, one request each, holds them
// idle and compares the copier's resident memory before and with them.
func (b *bencher) idleMemory(ctx context.Context, n int, locals []netip.Addr) (*idleResult, error) {
	res := &idleResult{}
	m0, err := b.st.copyMetrics()
	if err != nil {
		return nil, fmt.Errorf("scrape copier: %w", err)
	}
	if _, res.rssBefore, err = procMem(b.st.copier.PID()); err != nil {
		return nil, err
	}
	spec := &loadSpec{shape: keepAlive, locals: locals, target: b.st.prodV4, prefix: "/idle", want: prodBody}
	var next atomic.Int64
	ws := make([]*loadWorker, 0, n)
	defer func() {
		for _, w := range ws {
			w.closeConn()
		}
	}()
	for range n {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("interrupted: %w", ctx.Err())
		}
		w := &loadWorker{d: b.d, spec: spec, next: &next, st: &workerStats{}}
		w.request(ctx)
		if w.conn == nil {
			res.errs++
			if res.firstErr == "" && w.st.firstErr != nil {
				res.firstErr = w.st.firstErr.Error()
			}
			continue
		}
		ws = append(ws, w)
	}
	res.opened = len(ws)
	want := m0["tcpshadow_copy_sessions_active"] + float64(res.opened)
	var m1 map[string]float64
	_ = poll(ctx, idleHold+3*time.Second, func() (bool, error) {
		m1, err = b.st.copyMetrics()
		return err == nil && m1["tcpshadow_copy_sessions_active"] >= want, nil
	})
	// Hold them a moment: the sessions' state is settled, the copier idle.
	select {
	case <-ctx.Done():
		return nil, fmt.Errorf("interrupted: %w", ctx.Err())
	case <-time.After(idleHold):
	}
	if m1, err = b.st.copyMetrics(); err != nil {
		return nil, fmt.Errorf("scrape copier: %w", err)
	}
	if _, res.rssWith, err = procMem(b.st.copier.PID()); err != nil {
		return nil, err
	}
	res.sessions = m1["tcpshadow_copy_sessions_active"] - m0["tcpshadow_copy_sessions_active"]
	for _, w := range ws {
		w.closeConn()
	}
	ws = nil
	fmt.Fprintf(b.out, "idle sessions: %d connections open (%d failed), copier holds %.0f more sessions, RSS %s → %s (%s a session)\n",
		res.opened, res.errs, res.sessions, mib(res.rssBefore), mib(res.rssWith), kib(res.perSession()))
	// Sessions whose FIN the copier missed end only by --idle-timeout
	// (10 s in the stage).
	if err := b.settle(ctx, 15*time.Second); err != nil {
		return nil, err
	}
	// Let the idle steps' copies reach the shadow before the next count.
	_ = b.prodLog.update()
	_ = b.shadowLog.update()
	return res, nil
}

// deltas returns after − before for every counter in after.
func deltas(after, before map[string]float64) map[string]float64 {
	d := make(map[string]float64, len(after))
	for k, v := range after {
		d[k] = v - before[k]
	}
	return d
}

func stepName(s series, rate int) string {
	return fmt.Sprintf("%s ×%d addr %s", shortShape(s.shape), s.addrs, rateStr(rate))
}

func shortShape(s shape) string {
	if s == keepAlive {
		return "keep-alive"
	}
	return "conn/req"
}

func progressLine(s series, r *stepResult) string {
	var b strings.Builder
	l := r.load
	fmt.Fprintf(&b, "%-26s answered %6.0f/s p50 %s p99 %s", stepName(s, r.rate)+":", l.rate(), msStr(l.quantile(.5)), msStr(l.quantile(.99)))
	if l.errs > 0 || l.missed > 0 {
		fmt.Fprintf(&b, " (errors %d, not offered %d", l.errs, l.missed)
		if l.firstErr != "" {
			fmt.Fprintf(&b, "; first: %s", l.firstErr)
		}
		b.WriteString(")")
	}
	if r.copier {
		fmt.Fprintf(&b, "; copied %s (%d/%d), copier %s µs, agent %s µs a copy; shed %.0f",
			ratio(r.copiedN(), r.prod), r.copiedN(), r.prod, usPer(r.copierCPU, r.copiedN()), usPer(r.agentCPU, r.copiedN()), shedOf(r.copyDelta))
	}
	fmt.Fprintf(&b, "; machine busy %s of a core", pctOf(r.busy, r.window))
	return b.String()
}
