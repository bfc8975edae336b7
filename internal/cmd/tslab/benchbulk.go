package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

// Two more shapes than the request series: one bulk upload stream
// (scenario 31), and HTTP/2 with multiplexed streams (28).

const (
	bulkPort  = 9000 // a sink of ours in prod and shadow, counting bytes
	h2Port    = 8080 // nginx, HTTP/2 over cleartext
	h2Conns   = 10
	h2Streams = 10
)

// sink counts the bytes read on port bulkPort of a namespace, per
// connection, in arrival order.
type sink struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []*atomic.Int64
}

func startSink(ns *lab.NS, addr netip.AddrPort) (*sink, error) {
	ln, err := ns.Listen("tcp", addr.String())
	if err != nil {
		return nil, fmt.Errorf("sink in %s: %w", ns.Name(), err)
	}
	s := &sink{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := new(atomic.Int64)
			s.mu.Lock()
			s.conns = append(s.conns, n)
			s.mu.Unlock()
			go func() {
				defer c.Close()
				buf := make([]byte, 256<<10)
				for {
					k, err := c.Read(buf)
					n.Add(int64(k))
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return s, nil
}

// last returns the bytes read on the connection accepted last, and how
// many there were.
func (s *sink) last() (int64, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.conns) == 0 {
		return 0, 0
	}
	return s.conns[len(s.conns)-1].Load(), len(s.conns)
}

func (s *sink) close() { s.ln.Close() }

// bulkResult is one bulk step: a single connection writing at rate bits
// per second (0: as fast as it goes) for the step.
type bulkResult struct {
	rate        int64 // offered, bits/s
	prod        int64 // bytes prod read
	shadow      int64 // bytes the shadow read
	took        time.Duration
	copierCPU   time.Duration
	agentCPU    time.Duration
	catchUp     time.Duration
	copyDelta   map[string]float64
	writeErr    error
	shadowConns int
}

func (r *bulkResult) gbps(n int64) float64 { return float64(n) * 8 / r.took.Seconds() / 1e9 }

// bulkStep uploads on one connection to prod's sink and waits for the
// shadow's to read as many bytes.
func (b *bencher) bulkStep(ctx context.Context, rate int64) (*bulkResult, error) {
	before, err := b.snap(true)
	if err != nil {
		return nil, err
	}
	r := &bulkResult{rate: rate}
	conn, err := b.st.lab.Client.DialContext(ctx, "tcp", netip.AddrPortFrom(lab.ProdClientSideV4, bulkPort).String())
	if err != nil {
		return nil, fmt.Errorf("bulk: %w", err)
	}
	buf := make([]byte, 256<<10)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	start := time.Now()
	var sent int64
	for time.Since(start) < b.cfg.step && ctx.Err() == nil {
		if rate > 0 {
			if ahead := time.Duration(float64(sent)*8/float64(rate)*1e9) - time.Since(start); ahead > 0 {
				time.Sleep(ahead)
			}
		}
		_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		n, err := conn.Write(buf)
		sent += int64(n)
		if err != nil {
			r.writeErr = err
			break
		}
	}
	conn.Close()
	r.took = time.Since(start)
	t0 := time.Now()
	var lastShadow int64
	lastChange := t0
	for ctx.Err() == nil {
		r.prod, _ = b.st.prodSink.last()
		r.shadow, r.shadowConns = b.st.shadowSink.last()
		if r.prod >= sent && r.shadow >= r.prod {
			break
		}
		if r.shadow != lastShadow {
			lastShadow, lastChange = r.shadow, time.Now()
		}
		if time.Since(t0) > benchCatchUp || time.Since(lastChange) > benchStall {
			b.warn("bulk at %s: the shadow read %d of prod's %d bytes", bitRate(rate), r.shadow, r.prod)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.catchUp = time.Since(t0)
	after, err := b.snap(true)
	if err != nil {
		return nil, err
	}
	r.copierCPU = after.cpu[roleCopier] - before.cpu[roleCopier]
	r.agentCPU = after.cpu[roleAgent] - before.cpu[roleAgent]
	r.copyDelta = deltas(after.copyM, before.copyM)
	if err := b.settle(ctx, benchSettle); err != nil {
		return nil, err
	}
	fmt.Fprintf(b.out, "  bulk %-8s prod %.2f Gbit/s, shadow read %s of it, copier %v agent %v CPU\n",
		bitRate(rate), r.gbps(r.prod), ratio64(r.shadow, r.prod), r.copierCPU.Round(time.Millisecond), r.agentCPU.Round(time.Millisecond))
	return r, nil
}

// h2Result is one HTTP/2 step.
type h2Result struct {
	rate          int // offered requests/s (0: as fast as h2load goes)
	prod, shadow  int
	took          time.Duration
	copierCPU     time.Duration
	agentCPU      time.Duration
	h2loadSummary string
}

// h2Step runs h2load from the client namespace against prod's HTTP/2
// listener: h2Conns connections of h2Streams concurrent streams each.
func (b *bencher) h2Step(ctx context.Context, rate int) (*h2Result, error) {
	if _, err := exec.LookPath("h2load"); err != nil {
		return nil, fmt.Errorf("h2load (Debian's nghttp2-client) not found: %w", err)
	}
	b.next++
	key := "h" + strconv.Itoa(b.next)
	before, err := b.snap(true)
	if err != nil {
		return nil, err
	}
	var uris []string
	for i := 0; i < 4; i++ {
		uris = append(uris, fmt.Sprintf("http://%s/%s/%d", netip.AddrPortFrom(lab.ProdClientSideV4, h2Port), key, i))
	}
	args := []string{"-c", strconv.Itoa(h2Conns), "-m", strconv.Itoa(h2Streams), "-D", strconv.Itoa(max(1, int(b.cfg.step.Seconds()))), "--warm-up-time", "0"}
	if rate > 0 {
		args = append(args, "--rps", strconv.Itoa(max(1, rate/h2Conns)))
	}
	rctx, cancel := context.WithTimeout(ctx, b.cfg.step+30*time.Second)
	start := time.Now()
	out, err := b.st.lab.Client.Run(rctx, "h2load", append(args, uris...)...)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("h2load: %w", err)
	}
	r := &h2Result{rate: rate, took: time.Since(start), h2loadSummary: h2Summary(string(out))}
	t0 := time.Now()
	lastShadow, lastChange := -1, t0
	for ctx.Err() == nil {
		if err := b.prodLog.update(); err != nil {
			return nil, err
		}
		if err := b.shadowLog.update(); err != nil {
			return nil, err
		}
		r.prod, r.shadow = b.prodLog.counts[key], b.shadowLog.counts[key]
		if r.shadow >= r.prod && r.prod > 0 {
			break
		}
		if r.shadow != lastShadow {
			lastShadow, lastChange = r.shadow, time.Now()
		}
		if time.Since(t0) > benchCatchUp || time.Since(lastChange) > benchStall {
			b.warn("HTTP/2 at %s: the shadow stopped at %d of prod's %d requests", rateStr(rate), r.shadow, r.prod)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	after, err := b.snap(true)
	if err != nil {
		return nil, err
	}
	r.copierCPU = after.cpu[roleCopier] - before.cpu[roleCopier]
	r.agentCPU = after.cpu[roleAgent] - before.cpu[roleAgent]
	if err := b.settle(ctx, benchSettle); err != nil {
		return nil, err
	}
	fmt.Fprintf(b.out, "  h2 %-8s prod %d requests, copied %s, copier+agent %s a request\n",
		rateStr(rate), r.prod, ratio(r.shadow, r.prod), usPer(r.copierCPU+r.agentCPU, min(r.shadow, r.prod)))
	return r, nil
}

// h2Summary keeps h2load's "requests:" line.
func h2Summary(out string) string {
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "requests:") {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

// parseBitRates reads "500M,1G,max" into bits per second (max: 0).
func parseBitRates(s string) ([]int64, error) {
	var out []int64
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "max" {
			out = append(out, 0)
			continue
		}
		mul := int64(1)
		switch {
		case strings.HasSuffix(f, "G"):
			f, mul = strings.TrimSuffix(f, "G"), 1e9
		case strings.HasSuffix(f, "M"):
			f, mul = strings.TrimSuffix(f, "M"), 1e6
		}
		n, err := strconv.ParseFloat(f, 64)
		if err != nil || n <= 0 || n*float64(mul) > 100e9 {
			return nil, fmt.Errorf("rate %q: want bits per second such as 500M or 1G, up to 100G, or max", f)
		}
		out = append(out, int64(n*float64(mul)))
	}
	return out, nil
}

func bitRate(r int64) string {
	switch {
	case r == 0:
		return "max"
	case r >= 1e9:
		return strconv.FormatFloat(float64(r)/1e9, 'g', 3, 64) + " Gbit/s"
	}
	return strconv.FormatFloat(float64(r)/1e6, 'g', 3, 64) + " Mbit/s"
}

func ratio64(part, whole int64) string {
	if whole == 0 {
		return "-"
	}
	return ratio(int(part>>10), int(whole>>10)) // KiB keep int in range
}

// renderBulk and renderH2 write the two shapes' tables.
func renderBulk(b *strings.Builder, rs []*bulkResult) {
	if len(rs) == 0 {
		return
	}
	b.WriteString("## One bulk upload stream\n\n")
	b.WriteString("One connection writes to a byte-counting sink on prod (port 9000, copied to the same sink on the shadow) at the offered bit rate for the step. Copied: bytes the shadow read / bytes prod read. CPU per GB of prod's bytes.\n\n")
	b.WriteString("| offered | prod read | copied | copier CPU | agent CPU | copier per GB | shadow caught up after |\n|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		gb := float64(r.prod) / 1e9
		per := "-"
		if gb > 0 {
			per = fmt.Sprintf("%.2f s", r.copierCPU.Seconds()/gb)
		}
		fmt.Fprintf(b, "| %s | %.2f Gbit/s | %s | %v | %v | %s | %v |\n", bitRate(r.rate), r.gbps(r.prod), ratio64(r.shadow, r.prod),
			r.copierCPU.Round(10*time.Millisecond), r.agentCPU.Round(10*time.Millisecond), per, r.catchUp.Round(10*time.Millisecond))
	}
	b.WriteString("\n")
}

func renderH2(b *strings.Builder, rs []*h2Result) {
	if len(rs) == 0 {
		return
	}
	fmt.Fprintf(b, "## HTTP/2, multiplexed\n\n")
	fmt.Fprintf(b, "h2load, %d connections of %d concurrent streams, to nginx on prod (HTTP/2 over cleartext, port %d, copied to the shadow's). Copied: shadow requests / prod requests, from the access logs.\n\n", h2Conns, h2Streams, h2Port)
	b.WriteString("| offered | prod requests | copied | copier + agent per copied request | h2load |\n|---|---|---|---|---|\n")
	for _, r := range rs {
		fmt.Fprintf(b, "| %s | %d | %s | %s | %s |\n", rateStr(r.rate), r.prod, ratio(r.shadow, r.prod),
			usPer(r.copierCPU+r.agentCPU, min(r.shadow, r.prod)), r.h2loadSummary)
	}
	b.WriteString("\n")
}
