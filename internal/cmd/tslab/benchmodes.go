package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

// The deployment modes' dimension: the same copy measured through each
// way packets reach the shadow, in the two-host lab (the agent on the
// shadow, intercept --local): direct (raw IP sockets, forged packets on
// the segment), datalink (AF_PACKET to the next hop's MAC) and tunnel
// (UDP datagrams to the agent, which injects them; the switch drops
// forged sources, as clouds do). One keep-alive step at --mode-rate and
// one bulk upload as fast as it goes, per mode, each on a fresh stage.

const (
	modeDirect   = "direct"
	modeDatalink = "datalink"
	modeTunnel   = "tunnel"
)

var allModes = []string{modeDirect, modeDatalink, modeTunnel}

// parseModes reads "direct,datalink,tunnel"; "" runs none.
func parseModes(s string) ([]string, error) {
	var out []string
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		ok := false
		for _, m := range allModes {
			ok = ok || f == m
		}
		if !ok {
			return nil, fmt.Errorf("%q: want %s", f, strings.Join(allModes, ", "))
		}
		out = append(out, f)
	}
	return out, nil
}

// modeLab is the lab of a stage: the assist's four hosts without a mode,
// two hosts with one, anti-spoofing on the switch for the tunnel.
func modeLab(mode string) lab.Config {
	return lab.Config{Prefix: labPrefix, TwoHosts: mode != "", AntiSpoofing: mode == modeTunnel}
}

// startModeDaemons starts the agent on the shadow (intercept --local) and
// the copier sending the mode's way.
func (s *stage) startModeDaemons(ctx context.Context, cfg stageConfig, secret string) (err error) {
	agent := []string{"intercept", "--local", "--to", lab.PoolV4.String(), "--to", lab.PoolV6.String(),
		"--listen", net.JoinHostPort(lab.ShadowV4.String(), agentPort),
		"--secret-file", secret, "--stats-interval", "0", "--metrics", s.agentMetricsAddr()}
	copier := s.copierArgs(lab.ShadowV4, secret)
	switch s.mode {
	case modeDatalink:
		copier = append(copier, "--send", "datalink")
	case modeTunnel:
		agent = append(agent, "--tunnel")
		copier = append(copier, "--transport", "udp")
	}
	s.agent, err = s.lab.Shadow.Start(ctx, cfg.bin, append(agent, cfg.agentArgs...)...)
	if err != nil {
		return fmt.Errorf("start agent: %w", err)
	}
	if err := s.waitDaemon(ctx, "agent", s.agent, s.agentMetrics, func(map[string]float64) bool { return true }); err != nil {
		return err
	}
	return s.startCopier(ctx, cfg, copier)
}

// modeResult is one mode's measurements.
type modeResult struct {
	mode      string
	keepAlive *stepResult
	bulk      []*bulkResult // by cfg.modeBulk
	spoofed   int           // frames from forged sources the switch dropped (tunnel: must stay 0)
	warnings  []string
}

// runModes measures every mode of cfg, each on a stage of its own torn
// down before the next.
func runModes(ctx context.Context, cfg *benchConfig, out io.Writer, log *slog.Logger) (_ []*modeResult, err error) {
	var res []*modeResult
	for _, mode := range cfg.modes {
		fmt.Fprintf(out, "\nmode %s (two hosts, the agent on the shadow):\n", mode)
		r, err := runMode(ctx, cfg, mode, out, log)
		if err != nil {
			return res, fmt.Errorf("mode %s: %w", mode, err)
		}
		res = append(res, r)
	}
	return res, nil
}

func runMode(ctx context.Context, cfg *benchConfig, mode string, out io.Writer, log *slog.Logger) (_ *modeResult, err error) {
	st, err := upStage(ctx, stageConfig{bin: cfg.bin, nginx: cfg.nginx, mode: mode,
		copyArgs: cfg.copyArgs, agentArgs: cfg.agentArgs, progress: out, log: log})
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, teardown(st, out)) }()
	d, err := st.lab.Client.NewDialer()
	if err != nil {
		return nil, err
	}
	defer d.Close()
	b := newBencher(st, d, cfg, out)
	r := &modeResult{mode: mode}
	ka := series{shape: keepAlive, addrs: 1, conns: keepAliveConns, rates: []int{cfg.modeRate}}
	if r.keepAlive, err = b.step(ctx, ka, cfg.modeRate, true); err != nil {
		return nil, err
	}
	for _, rate := range cfg.modeBulk {
		u, err := b.bulkStep(ctx, rate)
		if err != nil {
			return nil, err
		}
		r.bulk = append(r.bulk, u)
	}
	if mode == modeTunnel {
		v4, v6, err := st.lab.SpoofDrops(ctx)
		if err != nil {
			return nil, err
		}
		r.spoofed = v4 + v6
	}
	if st.copier.Exited() || st.agent.Exited() {
		return nil, fmt.Errorf("a daemon exited:\n%s\n%s", tail(st.copier.Output(), 10), tail(st.agent.Output(), 10))
	}
	r.warnings = b.warnings
	return r, nil
}

// renderModes writes the modes' tables.
func renderModes(b *strings.Builder, cfg *benchConfig, rs []*modeResult) {
	if len(rs) == 0 {
		return
	}
	fmt.Fprintf(b, "## Deployment modes\n\n")
	fmt.Fprintf(b, "Two hosts (client → prod → switch → shadow; the agent on the shadow, `intercept --local`), a fresh lab per mode: "+
		"`--send raw` (direct, the default), `--send datalink`, and `--transport udp` with `intercept --local --tunnel`, "+
		"where the switch drops every frame from prod whose source is not prod's own (the direct modes would copy nothing there). "+
		"Keep-alive: %d connections, 1 client address, at %s req/s for %v; CPU from the step's start until the shadow caught up, per copied request. "+
		"Bulk: one upload connection at each offered rate for %v; Gbit/s of the bytes each side read over the upload's time, CPU per GB the shadow read.\n\n",
		keepAliveConns, rateStr(cfg.modeRate), cfg.step, cfg.step)
	b.WriteString("| mode | keep-alive answered | copied | copier µs a copy | agent µs a copy | both µs a copy | forged frames dropped by the switch |\n")
	b.WriteString("|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		k := r.keepAlive
		spoof := "–"
		if r.mode == modeTunnel {
			spoof = fmt.Sprint(r.spoofed)
		}
		fmt.Fprintf(b, "| %s | %.0f/s | %s | %s | %s | %s | %s |\n", r.mode,
			k.load.rate(), ratio(k.copiedN(), k.prod), usPer(k.copierCPU, k.copiedN()), usPer(k.agentCPU, k.copiedN()),
			usPer(k.copierCPU+k.agentCPU, k.copiedN()), spoof)
	}
	b.WriteString("\n| mode | bulk offered | prod read Gbit/s | shadow read Gbit/s | copied | copier CPU s per GB | agent CPU s per GB |\n")
	b.WriteString("|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		for _, u := range r.bulk {
			fmt.Fprintf(b, "| %s | %s | %.2f | %.2f | %s | %s | %s |\n", r.mode, bitRate(u.rate), u.gbps(u.prod), u.gbps(u.shadow),
				ratio64(u.shadow, u.prod), perGB(u.copierCPU, u.shadow), perGB(u.agentCPU, u.shadow))
		}
	}
	b.WriteString("\n")
}

// perGB is CPU seconds per GB of n bytes.
func perGB(cpu time.Duration, n int64) string {
	if n <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", cpu.Seconds()/(float64(n)/1e9))
}

// runModesOnly runs the modes alone (no request series): their table is
// the report, after the machine's.
func runModesOnly(ctx context.Context, cfg *benchConfig, res *benchResult, start time.Time, out io.Writer, log *slog.Logger) (*benchResult, error) {
	var err error
	if res.modes, err = runModes(ctx, cfg, out, log); err != nil {
		return nil, err
	}
	res.machine.loadEnd = loadavg()
	res.took = time.Since(start)
	var b strings.Builder
	m := res.machine
	fmt.Fprintf(&b, "Deployment modes alone, by `tslab bench --keepalive-rates= --conn-rates=` on %s (%v); %s, %d cores, kernel %s, commit %s; load average %s at the start, %s at the end.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), res.took.Round(time.Second), m.cpu, m.cores, m.kernel, m.commit, m.loadStart, m.loadEnd)
	renderModes(&b, cfg, res.modes)
	for _, r := range res.modes {
		for _, w := range r.warnings {
			fmt.Fprintf(&b, "- warning (%s): %s\n", r.mode, w)
		}
	}
	md := b.String()
	fmt.Fprintf(out, "\n%s\n", md)
	if cfg.out != "" {
		if err := os.WriteFile(cfg.out, []byte(md), 0o644); err != nil {
			return nil, fmt.Errorf("--out: %w", err)
		}
		fmt.Fprintf(out, "wrote %s\n", cfg.out)
	}
	return res, nil
}
