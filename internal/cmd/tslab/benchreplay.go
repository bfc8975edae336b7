package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

// The replay steps: one keep-alive step captured with tcpdump in prod
// (both directions), then replayed with tcpshadow replay at each speed
// against the shadow, the live copier stopped (its pool is the replay's).

// replayReport is what tcpshadow replay --json writes.
type replayReport struct {
	Packets       uint64  `json:"packets"`
	Sessions      uint64  `json:"sessions"`
	Requests      uint64  `json:"requests"`
	SpeedAsked    float64 `json:"speed_asked"`
	SpeedAchieved float64 `json:"speed_achieved"`
	FileSeconds   float64 `json:"file_seconds"`
	WallSeconds   float64 `json:"wall_seconds"`
	LateP50       float64 `json:"late_p50_seconds"`
	LateP99       float64 `json:"late_p99_seconds"`
	LateMax       float64 `json:"late_max_seconds"`
	PacingDrift   float64 `json:"pacing_drift_mean_seconds"`
	EngineShed    uint64  `json:"engine_shed"`
}

// replayResult is one replay of the recorded step.
type replayResult struct {
	speed    float64
	rep      replayReport
	recorded int // prod's requests of the recorded step
	served   int // the shadow's of this replay
	cpu      time.Duration
}

func (r *replayResult) perSecond(n uint64) float64 {
	if r.rep.WallSeconds <= 0 {
		return 0
	}
	return float64(n) / r.rep.WallSeconds
}

// parseSpeeds reads "1,2,5"; "" skips the replay steps.
func parseSpeeds(s string) ([]float64, error) {
	var out []float64
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		v, err := strconv.ParseFloat(f, 64)
		if err != nil || v <= 0 || v > 1000 {
			return nil, fmt.Errorf("%q: want a speed above 0, at most 1000", f)
		}
		out = append(out, v)
	}
	return out, nil
}

// replaySteps records one keep-alive step at rate, stops the live copier,
// and replays the recording at each speed.
func (b *bencher) replaySteps(ctx context.Context, rate int, speeds []float64) ([]*replayResult, error) {
	dir, err := os.MkdirTemp("", "tslab-replay-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	file := filepath.Join(dir, "step.pcap")
	dumpCtx, stopDump := context.WithTimeout(ctx, b.cfg.step+time.Minute) // bounds tcpdump
	defer stopDump()
	dump, err := b.st.lab.Prod.Start(dumpCtx, "tcpdump", "-Z", "root", "-U", "--immediate-mode", "-B", "131072", "-s", "0", "-n",
		"-i", lab.ProdClientLink, "-w", file, "tcp port 80")
	if err != nil {
		return nil, fmt.Errorf("start tcpdump: %w", err)
	}
	if err := poll(ctx, readyWait, func() (bool, error) { return strings.Contains(dump.Output(), "listening on"), nil }); err != nil {
		dump.Stop(5 * time.Second)
		return nil, fmt.Errorf("tcpdump: %w\n%s", err, dump.Output())
	}
	s := series{shape: keepAlive, addrs: 1, conns: keepAliveConns, rates: []int{rate}}
	fmt.Fprintf(b.out, "\nrecording a step for the replays:\n")
	rec, err := b.step(ctx, s, rate, true)
	if err != nil {
		dump.Stop(5 * time.Second)
		return nil, err
	}
	dump.Stop(5 * time.Second)
	if out := dump.Output(); !strings.Contains(out, "\n0 packets dropped by kernel") {
		b.warn("the replays' capture lost packets: %s", strings.ReplaceAll(strings.TrimSpace(out), "\n", "; "))
	}
	if err := b.st.copier.Stop(10 * time.Second); err != nil && !b.st.copier.Exited() {
		return nil, fmt.Errorf("stop the copier: %w", err)
	}
	secret, err := b.st.writeSecret()
	if err != nil {
		return nil, err
	}
	var out []*replayResult
	for i, speed := range speeds {
		if err := b.shadowLog.update(); err != nil {
			return nil, err
		}
		before := b.shadowLog.counts[rec.key]
		args := []string{"replay", file,
			"--map", fmt.Sprintf("%s:80-%s:80", lab.ProdClientSideV4, lab.ShadowV4),
			"--intercept", lab.AssistV4.String(), "--client-pool", lab.PoolV4.String(), "--secret-file", secret,
			"--no-divergence-log", "--linger", "1s", "--workers", "2", "--json", "--no-progress",
			"--pool-seed", strconv.Itoa(1000 + i), "--speed", strconv.FormatFloat(speed, 'g', -1, 64)}
		runCtx, cancel := context.WithTimeout(ctx, time.Duration(float64(b.cfg.step)/speed)+time.Minute)
		cmd := b.st.lab.Prod.Command(runCtx, b.cfg.bin, args...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		cancel()
		if err != nil {
			return nil, fmt.Errorf("replay at %gx: %w\n%s", speed, err, tail(stderr.String(), 10))
		}
		r := &replayResult{speed: speed, recorded: rec.prod, cpu: cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()}
		if err := json.Unmarshal(stdout.Bytes(), &r.rep); err != nil {
			return nil, fmt.Errorf("replay at %gx: summary: %w: %q", speed, err, stdout.String())
		}
		// nginx logs a request after answering it: wait for the last.
		_ = poll(ctx, benchStall, func() (bool, error) {
			err := b.shadowLog.update()
			return err == nil && b.shadowLog.counts[rec.key]-before >= rec.prod, err
		})
		r.served = b.shadowLog.counts[rec.key] - before
		if r.served != r.recorded {
			b.warn("replay at %gx: the shadow served %d of the %d recorded requests", speed, r.served, r.recorded)
		}
		fmt.Fprintf(b.out, "  replay %5gx: achieved %.2fx, %.0f req/s, %.0f sessions/s, served %d/%d, late p99 %s, replay CPU %s µs a request\n",
			speed, r.rep.SpeedAchieved, r.perSecond(r.rep.Requests), r.perSecond(r.rep.Sessions), r.served, r.recorded,
			msStr(secs(r.rep.LateP99)), usPer(r.cpu, int(r.rep.Requests)))
		out = append(out, r)
	}
	return out, nil
}

func secs(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// renderReplay writes the replay steps' table.
func renderReplay(b *strings.Builder, rs []*replayResult, rate int, step time.Duration) {
	if len(rs) == 0 {
		return
	}
	fmt.Fprintf(b, "## Replay\n\n")
	fmt.Fprintf(b, "One keep-alive step (50 connections, %s offered for %v) captured with tcpdump on prod's interface, both directions, then `tcpshadow replay` of the file against the shadow at each speed (the live copier stopped). "+
		"Achieved: the file's time over the wall time to the last data packet sent; requests and sessions a second over that wall time; late: how long after its scheduled time each packet went into the engine; drift: how much later than in the file each request reached the shadow, against the previous one (pacing by the shadow's answers); CPU: the replay process's, per request.\n\n", rateStr(rate), step)
	b.WriteString("| speed asked | achieved | requests | req/s | sessions/s | served / recorded | late p50 / p99 / max | drift (mean) | CPU a request |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		fmt.Fprintf(b, "| %gx | %.2fx | %d | %.0f | %.1f | %s (%d/%d) | %s / %s / %s ms | %s ms | %s µs |\n",
			r.speed, r.rep.SpeedAchieved, r.rep.Requests, r.perSecond(r.rep.Requests), r.perSecond(r.rep.Sessions),
			ratio(r.served, r.recorded), r.served, r.recorded,
			msStr(secs(r.rep.LateP50)), msStr(secs(r.rep.LateP99)), msStr(secs(r.rep.LateMax)), msStr(secs(r.rep.PacingDrift)), usPer(r.cpu, int(r.rep.Requests)))
	}
	b.WriteString("\n")
}
