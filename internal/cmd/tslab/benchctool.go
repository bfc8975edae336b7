package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

// The C tool's dimension: tcpcopy 1.x and its intercept, built from their
// public source outside this repository (README, "Against the C tool"; never
// vendored), run in the same lab as tcpshadow: its tcpcopy on prod
// capturing with pcap and sending raw IP from the pool's first /24, its
// intercept on the assist host capturing the shadow's replies. The same
// steps run for both tools, alternated, each tool fresh a step, so peak
// RSS is that step's.

const (
	toolOurs = "tcpshadow"
	toolC    = "tcpcopy"
)

// ctool is a build of the C tool.
type ctool struct {
	tcpcopy, intercept string
	version            string // "tcpcopy 1.3.0, intercept 1.0.0"
}

// findCTool looks for tcpcopy and intercept in dir: dir/sbin (make
// install with --prefix=dir), dir/objs (a source tree) or dir itself.
func findCTool(ctx context.Context, dir string) (*ctool, error) {
	find := func(name string) (string, error) {
		for _, sub := range []string{"sbin", "objs", ""} {
			p := filepath.Join(dir, sub, name)
			if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
				return filepath.Abs(p)
			}
		}
		return "", fmt.Errorf("no executable %s in %s, %s/sbin or %s/objs", name, dir, dir, dir)
	}
	c := &ctool{}
	var err1, err2 error
	c.tcpcopy, err1 = find("tcpcopy")
	c.intercept, err2 = find("intercept")
	if err := errors.Join(err1, err2); err != nil {
		return nil, err
	}
	ver := func(bin string) string {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		out, _ := exec.CommandContext(ctx, bin, "-v").CombinedOutput()
		return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	c.version = ver(c.tcpcopy) + ", " + ver(c.intercept)
	return c, nil
}

// vsStep is one step of the comparison, run by both tools.
type vsStep struct {
	series
	rate int
	runs map[string][]*stepResult // by tool, in run order
	// idle RSS of each tool's copier (tcpcopy) and agent (intercept)
	// once up, before the step's load: the first run's.
	copierIdle, agentIdle map[string]int64
}

// vsSeries are the comparison's steps: keep-alive from one address and
// one connection per request from connAddrs.
func vsSeries(kaRates, connRates []int, connAddrs int) []series {
	var out []series
	if len(kaRates) > 0 {
		out = append(out, series{shape: keepAlive, addrs: 1, conns: keepAliveConns, rates: kaRates})
	}
	if len(connRates) > 0 {
		out = append(out, series{shape: connPerReq, addrs: connAddrs, conns: connPerReqFlight, rates: connRates})
	}
	return out
}

// versus runs every comparison step for both tools, runs alternated
// (tcpshadow, tcpcopy, tcpshadow, ...), each tool started fresh for its
// step and stopped after it. tcpshadow's daemons are down on entry and
// on return.
func (b *bencher) versus(ctx context.Context, c *ctool, ser []series, runs int) ([]*vsStep, error) {
	fmt.Fprintf(b.out, "\ntcpshadow against the C tool (%s), alternated, each fresh a step:\n", c.version)
	var out []*vsStep
	for _, s := range ser {
		for _, rate := range s.rates {
			v := &vsStep{series: s, rate: rate, runs: map[string][]*stepResult{},
				copierIdle: map[string]int64{}, agentIdle: map[string]int64{}}
			for run := range runs {
				for _, tool := range []string{toolOurs, toolC} {
					r, err := b.toolStep(ctx, c, tool, s, rate, v, run == 0)
					if err != nil {
						return out, fmt.Errorf("%s %s: %w", tool, stepName(s, rate), err)
					}
					v.runs[tool] = append(v.runs[tool], r)
				}
			}
			out = append(out, v)
		}
	}
	return out, nil
}

// toolStep starts tool, runs one step through it and stops it.
func (b *bencher) toolStep(ctx context.Context, c *ctool, tool string, s series, rate int, v *vsStep, first bool) (_ *stepResult, err error) {
	if tool == toolOurs {
		err = b.st.startDaemons(ctx, stageConfig{bin: b.cfg.bin, copyArgs: b.cfg.copyArgs, agentArgs: b.cfg.agentArgs})
	} else {
		err = b.st.startCTool(ctx, c)
	}
	if err != nil {
		return nil, errors.Join(err, b.st.stopDaemons())
	}
	defer func() { err = errors.Join(err, b.st.stopDaemons()) }()
	b.daemonsUp()
	if first {
		// A moment for the daemons' start-up allocations to settle.
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
		if _, v.copierIdle[tool], err = procMem(b.st.copier.PID()); err != nil {
			return nil, err
		}
		if _, v.agentIdle[tool], err = procMem(b.st.agent.PID()); err != nil {
			return nil, err
		}
	}
	fmt.Fprintf(b.out, "  %-9s ", tool)
	r, err := b.step(ctx, s, rate, true)
	if err != nil {
		return nil, err
	}
	if b.st.copier.Exited() || b.st.agent.Exited() {
		return nil, fmt.Errorf("a daemon exited during the step:\n%s\n%s", tail(b.st.copier.Output(), 10), tail(b.st.agent.Output(), 10))
	}
	return r, nil
}

// stopDaemons stops the copier, then the agent, whichever tool they are.
func (s *stage) stopDaemons() error {
	var errs []error
	for _, p := range []*lab.Process{s.copier, s.agent} {
		if p == nil {
			continue
		}
		if err := p.Stop(10 * time.Second); err != nil && !p.Exited() {
			errs = append(errs, err)
		}
	}
	s.copier, s.agent, s.ctool = nil, nil, false
	return errors.Join(errs...)
}

// startCTool starts the C tool's intercept on the assist host and its
// tcpcopy on prod, and waits until tcpcopy is connected to intercept.
// Their logs go to the stage's secret directory (removed by close).
func (s *stage) startCTool(ctx context.Context, c *ctool) (err error) {
	if _, err := s.writeSecret(); err != nil {
		return err
	}
	logs := s.secretDir
	s.agent, err = s.lab.Assist.Start(ctx, c.intercept, "-i", lab.HostLink, "-F", "tcp and src port 80",
		"-b", lab.AssistV4.String(), "-p", agentPort, "-l", filepath.Join(logs, "intercept.log"))
	if err != nil {
		return fmt.Errorf("start intercept: %w", err)
	}
	s.ctool = true
	listening := func() (bool, error) {
		if s.agent.Exited() {
			return false, fmt.Errorf("intercept exited: %w\n%s%s", s.agent.Wait(), s.agent.Output(), tailFile(filepath.Join(logs, "intercept.log")))
		}
		out, _ := s.lab.Assist.Run(ctx, "ss", "-Hltn", "sport = :"+agentPort)
		return len(strings.TrimSpace(string(out))) > 0, nil
	}
	if err := poll(ctx, readyWait, listening); err != nil {
		return fmt.Errorf("intercept not listening: %w", err)
	}
	// tcpcopy rewrites client addresses into one /24 given as a.b.c.x:
	// the pool's first.
	pool := lab.PoolV4.Addr().As4()
	s.copier, err = s.lab.Prod.Start(ctx, c.tcpcopy,
		"-x", fmt.Sprintf("%s:%d-%s:%d", lab.ProdClientSideV4, httpPort, lab.ShadowV4, httpPort),
		"-s", net.JoinHostPort(lab.AssistV4.String(), agentPort),
		"-c", fmt.Sprintf("%d.%d.%d.x", pool[0], pool[1], pool[2]),
		"-i", lab.ProdClientLink, "-l", filepath.Join(logs, "tcpcopy.log"))
	if err != nil {
		return fmt.Errorf("start tcpcopy: %w", err)
	}
	connected := func() (bool, error) {
		if s.copier.Exited() {
			return false, fmt.Errorf("tcpcopy exited: %w\n%s%s", s.copier.Wait(), s.copier.Output(), tailFile(filepath.Join(logs, "tcpcopy.log")))
		}
		out, _ := s.lab.Prod.Run(ctx, "ss", "-Htn", "state", "established", "dport = :"+agentPort)
		return len(strings.TrimSpace(string(out))) > 0, nil
	}
	if err := poll(ctx, readyWait, connected); err != nil {
		return fmt.Errorf("tcpcopy not connected to intercept: %w", err)
	}
	return nil
}

// tailFile returns the last lines of a log file, for errors.
func tailFile(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return "\n" + tail(string(b), 10)
}

// toolCost sums a tool's runs of a step: CPU of both daemons over the
// copied requests, the copy ratio over all runs, the peaks' maximum.
type toolCost struct {
	copier, agent       time.Duration
	copied, prod        int
	answered            float64 // mean answered rate
	copierHWM, agentHWM int64
}

func costOf(rs []*stepResult) toolCost {
	var c toolCost
	for _, r := range rs {
		c.copier += r.copierCPU
		c.agent += r.agentCPU
		c.copied += r.copiedN()
		c.prod += r.prod
		c.answered += r.load.rate() / float64(len(rs))
		c.copierHWM, c.agentHWM = max(c.copierHWM, r.copierHWM), max(c.agentHWM, r.agentHWM)
	}
	return c
}

// usPerReq is both daemons' CPU per copied request in µs (0 without any).
func (c toolCost) usPerReq() float64 {
	if c.copied == 0 {
		return 0
	}
	return float64(c.copier+c.agent) / float64(time.Microsecond) / float64(c.copied)
}

// renderVersus writes the comparison's table and the targets' verdicts.
func renderVersus(b *strings.Builder, c *ctool, vs []*vsStep, runs int) {
	if len(vs) == 0 {
		return
	}
	b.WriteString("## Against the C tool, measured\n\n")
	fmt.Fprintf(b, "%s (built from its public source with `--pcap-capture`; README, \"Against the C tool\"): its tcpcopy on prod (`-x 198.18.0.1:80-198.18.1.2:80 -c 198.19.0.x -i eth0`, raw IP send), its intercept on the assist host (`-i eth0 -F 'tcp and src port 80'`), in the same lab as tcpshadow (`copy --workers 2`, `intercept`), the same load. Runs alternated (tcpshadow, then tcpcopy, %d time(s) a step), each tool started fresh for its step, so its peak RSS is that step's; idle RSS is each tool's 1 s after it came up, before the step's load. CPU: copier + agent, utime + stime from the step's start until the shadow caught up, per copied request, summed over the runs. Ratio: tcpshadow ÷ tcpcopy (target ≤ 0.5).\n\n", c.version, runs)
	b.WriteString("| step | answered (tcpshadow / tcpcopy) | tcpshadow µs a copy (copier + agent) | tcpcopy µs a copy (copier + agent) | ratio | copied tcpshadow / tcpcopy | peak RSS copier tcpshadow / tcpcopy | peak RSS agent tcpshadow / intercept | idle RSS copier / agent, tcpshadow vs tcpcopy |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|\n")
	for _, v := range vs {
		o, t := costOf(v.runs[toolOurs]), costOf(v.runs[toolC])
		unit := "req/s"
		if v.shape == connPerReq {
			unit = "conn/s"
		}
		ratioStr := "–"
		if t.usPerReq() > 0 && o.usPerReq() > 0 {
			ratioStr = fmt.Sprintf("**%.2f**", o.usPerReq()/t.usPerReq())
		}
		fmt.Fprintf(b, "| %s %s %s | %.0f / %.0f | %s (%s + %s) | %s (%s + %s) | %s | %s / %s | %s / %s | %s / %s | %s / %s vs %s / %s |\n",
			shortShape(v.shape), rateStr(v.rate), unit+addrNote(v.addrs), o.answered, t.answered,
			usPer(o.copier+o.agent, o.copied), usPer(o.copier, o.copied), usPer(o.agent, o.copied),
			usPer(t.copier+t.agent, t.copied), usPer(t.copier, t.copied), usPer(t.agent, t.copied),
			ratioStr, ratio(o.copied, o.prod), ratio(t.copied, t.prod),
			mib(o.copierHWM), mib(t.copierHWM), mib(o.agentHWM), mib(t.agentHWM),
			mib(v.copierIdle[toolOurs]), mib(v.agentIdle[toolOurs]), mib(v.copierIdle[toolC]), mib(v.agentIdle[toolC]))
	}
	b.WriteString("\n")
	// No ballooning: tcpshadow's cost at 1k within 2× its cost at 10k.
	var at1k, at10k float64
	for _, v := range vs {
		if v.shape == keepAlive {
			switch v.rate {
			case 1000:
				at1k = costOf(v.runs[toolOurs]).usPerReq()
			case 10000:
				at10k = costOf(v.runs[toolOurs]).usPerReq()
			}
		}
	}
	if at1k > 0 && at10k > 0 {
		fmt.Fprintf(b, "tcpshadow's keep-alive cost at 1k is %.1f× its cost at 10k (target ≤ 2×).\n\n", at1k/at10k)
	}
}

func addrNote(n int) string {
	if n == 1 {
		return ", 1 address"
	}
	return fmt.Sprintf(", %d addresses", n)
}

// versusProgress is written after the comparison.
func versusProgress(out io.Writer, vs []*vsStep) {
	for _, v := range vs {
		o, t := costOf(v.runs[toolOurs]), costOf(v.runs[toolC])
		r := 0.0
		if t.usPerReq() > 0 {
			r = o.usPerReq() / t.usPerReq()
		}
		fmt.Fprintf(out, "  %-26s tcpshadow %.1f µs, tcpcopy %.1f µs a copy: ratio %.2f; copied %s / %s\n",
			stepName(v.series, v.rate)+":", o.usPerReq(), t.usPerReq(), r, ratio(o.copied, o.prod), ratio(t.copied, t.prod))
	}
}
