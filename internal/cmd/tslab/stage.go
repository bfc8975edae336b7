package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/lab"
	"github.com/tcpshadow/tcpshadow/internal/metrics"
)

const (
	labPrefix   = "tshdemo"
	httpPort    = 80
	agentPort   = "36524"
	metricsPort = "9464"
	readyWait   = 10 * time.Second // per daemon or server coming up
	pollEvery   = 50 * time.Millisecond
)

// stage is a lab with nginx in prod and shadow, the intercept agent on the
// assist host and the copy daemon on prod, set up like
// internal/e2e/harness_test.go newEnv: what the demo (and a benchmark)
// drive traffic through.
type stage struct {
	lab                  *lab.Lab
	prod, shadow         *nginx
	prodSink, shadowSink *sink // byte counters on bulkPort
	agent, copier        *lab.Process
	prodV4, prodV6       netip.AddrPort // where clients connect
	secretDir            string         // holds the control channel's secret; removed by close
	mode                 string         // a deployment mode's two-host stage (benchmodes.go); "": the assist's
	ctool                bool           // copier and agent are the C tool's tcpcopy and intercept (benchctool.go)
	pprof                bool           // the copier serves its profiler: its metrics on prod's loopback
}

type stageConfig struct {
	bin       string   // tcpshadow
	nginx     string   // nginx binary
	copyArgs  []string // extra copy flags, appended
	agentArgs []string // extra intercept flags, appended
	// noDaemons leaves the agent and copier out (startDaemons adds them
	// later): the benchmark measures prod alone first.
	noDaemons bool
	// mode, when set, builds the two-host stage of a deployment mode
	// (benchmodes.go) instead of the one with an assist host.
	mode string
	// pprof runs the copier with --debug-pprof, its metrics address on
	// prod's loopback (the profiler's condition).
	pprof    bool
	progress io.Writer
	log      *slog.Logger // lab messages
}

// upStage builds the stage. Processes are started with ctx, so cancelling
// it stops them; close tears everything down. On error, upStage tears down
// what it built before returning.
func upStage(ctx context.Context, cfg stageConfig) (_ *stage, err error) {
	t0 := time.Now()
	since := func() time.Duration {
		d := time.Since(t0).Round(10 * time.Millisecond)
		t0 = time.Now()
		return d
	}
	l, err := lab.New(ctx, modeLab(cfg.mode), cfg.log)
	if err != nil {
		return nil, err
	}
	s := &stage{
		lab: l, mode: cfg.mode, pprof: cfg.pprof,
		prodV4: netip.AddrPortFrom(lab.ProdClientSideV4, httpPort),
		prodV6: netip.AddrPortFrom(lab.ProdClientSideV6, httpPort),
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.close())
		}
	}()
	fmt.Fprintf(cfg.progress, "lab up (%v): namespaces %s\n", since(), strings.Join(s.nsNames(), " "))

	s.prod, err = startNginx(ctx, cfg.nginx, l.Prod, "prod", s.prodV4, s.prodV6)
	if err != nil {
		return s, err
	}
	s.shadow, err = startNginx(ctx, cfg.nginx, l.Shadow, "shadow",
		netip.AddrPortFrom(lab.ShadowV4, httpPort), netip.AddrPortFrom(lab.ShadowV6, httpPort))
	if err != nil {
		return s, err
	}
	if s.prodSink, err = startSink(l.Prod, netip.AddrPortFrom(lab.ProdClientSideV4, bulkPort)); err != nil {
		return s, err
	}
	if s.shadowSink, err = startSink(l.Shadow, netip.AddrPortFrom(lab.ShadowV4, bulkPort)); err != nil {
		return s, err
	}
	fmt.Fprintf(cfg.progress, "nginx up in prod (%s, %s) and shadow (%s, %s) (%v)\n",
		s.prodV4, s.prodV6, netip.AddrPortFrom(lab.ShadowV4, httpPort), netip.AddrPortFrom(lab.ShadowV6, httpPort), since())

	if cfg.noDaemons {
		return s, nil
	}
	if err := s.startDaemons(ctx, cfg); err != nil {
		return s, err
	}
	where := "tcpshadow intercept in assist"
	if cfg.mode != "" {
		where = "tcpshadow intercept --local in shadow"
	}
	fmt.Fprintf(cfg.progress, "agent and copier up (%v): %s, tcpshadow copy in prod, connected\n", since(), where)
	return s, nil
}

// startDaemons starts the agent on the assist host and the copier on prod
// and waits until the copier is connected to the agent.
func (s *stage) startDaemons(ctx context.Context, cfg stageConfig) error {
	secret, err := s.writeSecret()
	if err != nil {
		return err
	}
	if s.mode != "" {
		return s.startModeDaemons(ctx, cfg, secret)
	}
	s.agent, err = s.lab.Assist.Start(ctx, cfg.bin, append([]string{"intercept", "--iface", lab.HostLink,
		"--filter", fmt.Sprintf("tcp and (src port 80 or src port %d or src port %d)", h2Port, bulkPort), "--listen", net.JoinHostPort(lab.AssistV4.String(), agentPort),
		"--secret-file", secret, "--stats-interval", "0", "--metrics", s.agentMetricsAddr()}, cfg.agentArgs...)...)
	if err != nil {
		return fmt.Errorf("start agent: %w", err)
	}
	// The agent listens before it serves metrics, so answered metrics mean
	// it is ready for the copier.
	if err := s.waitDaemon(ctx, "agent", s.agent, s.agentMetrics, func(map[string]float64) bool { return true }); err != nil {
		return err
	}
	return s.startCopier(ctx, cfg, s.copierArgs(lab.AssistV4, secret))
}

// copierArgs are the copy daemon's flags, its agent at agent.
func (s *stage) copierArgs(agent netip.Addr, secret string) []string {
	args := []string{"copy", "--iface", lab.ProdClientLink,
		"--map", fmt.Sprintf("%s:80-%s:80", lab.ProdClientSideV4, lab.ShadowV4),
		"--map", fmt.Sprintf("[%s]:80-[%s]:80", lab.ProdClientSideV6, lab.ShadowV6),
		"--map", fmt.Sprintf("%s:%d-%s:%d", lab.ProdClientSideV4, h2Port, lab.ShadowV4, h2Port),
		"--map", fmt.Sprintf("%s:%d-%s:%d", lab.ProdClientSideV4, bulkPort, lab.ShadowV4, bulkPort),
		"--intercept", agent.String(),
		"--client-pool", lab.PoolV4.String(), "--client-pool", lab.PoolV6.String(),
		"--metrics", s.copyMetricsAddr(),
		"--stats-interval", "0", "--linger", "1s", "--idle-timeout", "10s",
		"--workers", "2", "--secret-file", secret,
		"--divergence-log", filepath.Join(filepath.Dir(secret), "divergence.jsonl"),
	}
	if s.pprof {
		args = append(args, "--debug-pprof")
	}
	return args
}

// startCopier starts the copy daemon with args and cfg's extra flags and
// waits until it is connected to the agent.
func (s *stage) startCopier(ctx context.Context, cfg stageConfig, args []string) (err error) {
	s.copier, err = s.lab.Prod.Start(ctx, cfg.bin, append(args, cfg.copyArgs...)...)
	if err != nil {
		return fmt.Errorf("start copier: %w", err)
	}
	if err := s.waitDaemon(ctx, "copier", s.copier, s.copyMetrics, func(m map[string]float64) bool {
		return m["tcpshadow_agent_connected"] == 1
	}); err != nil {
		return err
	}
	return nil
}

// waitDaemon polls a daemon's metrics until ready holds, failing early if
// it exits.
func (s *stage) waitDaemon(ctx context.Context, what string, p *lab.Process,
	scrape func() (map[string]float64, error), ready func(map[string]float64) bool) error {
	err := poll(ctx, readyWait, func() (bool, error) {
		if p.Exited() {
			return false, fmt.Errorf("exited: %w\n%s", p.Wait(), tail(p.Output(), 20))
		}
		m, err := scrape()
		return err == nil && ready(m), nil
	})
	if err != nil {
		return fmt.Errorf("%s not ready: %w", what, err)
	}
	return nil
}

// writeSecret writes a fresh control channel secret (mode 0600, in a
// directory of its own) for both daemons, once a stage, and returns its
// path.
func (s *stage) writeSecret() (string, error) {
	if s.secretDir != "" {
		return filepath.Join(s.secretDir, "secret"), nil
	}
	dir, err := os.MkdirTemp("", "tslab-secret-")
	if err != nil {
		return "", fmt.Errorf("secret: %w", err)
	}
	s.secretDir = dir
	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		return "", fmt.Errorf("secret: %w", err)
	}
	p := filepath.Join(dir, "secret")
	if err := os.WriteFile(p, []byte(base64.StdEncoding.EncodeToString(key[:])+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("secret: %w", err)
	}
	return p, nil
}

// close stops every process through the lab (by PID), deletes the
// namespaces, then removes the nginx and secret directories.
func (s *stage) close() error {
	for _, k := range []*sink{s.prodSink, s.shadowSink} {
		if k != nil {
			k.close()
		}
	}
	errs := []error{s.lab.Close()}
	if s.secretDir != "" {
		errs = append(errs, os.RemoveAll(s.secretDir))
	}
	for _, n := range []*nginx{s.prod, s.shadow} {
		if n != nil {
			errs = append(errs, n.cleanup())
		}
	}
	return errors.Join(errs...)
}

// procs describes the processes the stage started, for messages.
func (s *stage) procs() []string {
	var ps []string
	add := func(what string, p *lab.Process) {
		if p != nil {
			ps = append(ps, fmt.Sprintf("%s %d", what, p.PID()))
		}
	}
	for _, n := range []*nginx{s.prod, s.shadow} {
		if n != nil {
			add("nginx "+n.name, n.proc)
		}
	}
	add("agent", s.agent)
	add("copier", s.copier)
	return ps
}

func (s *stage) nsNames() []string {
	var names []string
	for _, n := range s.lab.Namespaces() {
		names = append(names, n.Name())
	}
	return names
}

func (s *stage) copyMetricsAddr() string {
	if s.pprof {
		return net.JoinHostPort("127.0.0.1", metricsPort)
	}
	return net.JoinHostPort(lab.ProdClientSideV4.String(), metricsPort)
}

func (s *stage) agentMetricsAddr() string {
	if s.mode != "" {
		return net.JoinHostPort(lab.ShadowV4.String(), metricsPort)
	}
	return net.JoinHostPort(lab.AssistV4.String(), metricsPort)
}

// copyMetrics scrapes the copy daemon from prod (over loopback, so the
// scrape is never captured).
func (s *stage) copyMetrics() (map[string]float64, error) {
	return scrape(s.lab.Prod, s.copyMetricsAddr())
}

// agentMetrics scrapes the agent from the prod namespace over the segment
// (port 9464: the copier captures port 80 only).
func (s *stage) agentMetrics() (map[string]float64, error) {
	return scrape(s.lab.Prod, s.agentMetricsAddr())
}

// scrape reads a daemon's metrics from inside namespace ns.
func scrape(ns *lab.NS, addr string) (map[string]float64, error) {
	c := ns.HTTPClient(1)
	defer c.CloseIdleConnections()
	c.Timeout = 2 * time.Second
	return metrics.Scrape(c, "http://"+addr+"/metrics")
}

// errTimedOut is poll's error when cond never held in time.
var errTimedOut = errors.New("timed out")

// poll calls cond every pollEvery until it returns true or an error, the
// timeout passes (errTimedOut) or ctx is done.
func poll(ctx context.Context, timeout time.Duration, cond func() (bool, error)) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return fmt.Errorf("%w after %v", errTimedOut, timeout)
		case <-t.C:
		}
	}
}

// tail returns the last k lines of s.
func tail(s string, k int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > k {
		lines = lines[len(lines)-k:]
	}
	return strings.Join(lines, "\n")
}
