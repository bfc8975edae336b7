package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

// The cost of a copy: the same keep-alive step with the copier at
// --multiply 1 and at --multiply 10, the copier restarted before each, so
// that the CPU it takes per request reaching the shadow tells what one
// more copy of a connection costs against the first.

// multiplyFactor is the multiplied step's --multiply.
const multiplyFactor = 10

// multiplyCost is the outcome: the step at each factor.
type multiplyCost struct {
	rate      int
	one, many *stepResult
}

// measureMultiplyCost restarts the copier at --multiply 1, then 10, runs
// a step at rate with each, and leaves it running at 1.
func (b *bencher) measureMultiplyCost(ctx context.Context, rate int) (*multiplyCost, error) {
	s := series{shape: keepAlive, addrs: 1, conns: 50}
	c := &multiplyCost{rate: rate}
	secret, err := b.st.writeSecret()
	if err != nil {
		return nil, err
	}
	defer func() { b.copies = 0 }()
	for _, n := range []int{1, multiplyFactor, 1} {
		if err := b.st.copier.Stop(5 * time.Second); err != nil && !b.st.copier.Exited() {
			return nil, fmt.Errorf("stop copier: %w", err)
		}
		extra := append(append([]string(nil), b.cfg.copyArgs...), fmt.Sprintf("--multiply=%d", n))
		if err := b.st.startCopier(ctx, stageConfig{bin: b.cfg.bin, copyArgs: extra}, b.st.copierArgs(lab.AssistV4, secret)); err != nil {
			return nil, fmt.Errorf("restart copier: %w", err)
		}
		b.daemonsUp()
		if c.many != nil {
			break // back at 1 for what follows
		}
		b.copies = n
		r, err := b.step(ctx, s, rate, true)
		if err != nil {
			return nil, err
		}
		if n == 1 {
			c.one = r
		} else {
			c.many = r
		}
	}
	return c, nil
}

// renderMultiplyCost writes the multiply section.
func renderMultiplyCost(b *strings.Builder, c *multiplyCost) {
	if c == nil {
		return
	}
	fmt.Fprintf(b, "## The cost of a copy (--multiply)\n\n")
	fmt.Fprintf(b, "Keep-alive HTTP at %s req/s, 50 connections, 1 client address; the copier restarted at `--multiply 1`, then `--multiply %d`. A copy is a request the shadow served; the CPU is the copier's, from /proc, over the step and its catching up.\n\n",
		rateName(c.rate), multiplyFactor)
	b.WriteString("| multiply | prod served | shadow served | copies / prod request | copier µs a copy | agent µs a copy |\n|---|---|---|---|---|---|\n")
	row := func(n int, r *stepResult) {
		fmt.Fprintf(b, "| %d | %d | %d | %.2f | %s | %s |\n", n, r.prod, r.shadow, float64(r.shadow)/float64(max(r.prod, 1)),
			usPer(r.copierCPU, r.shadow), usPer(r.agentCPU, r.shadow))
	}
	row(1, c.one)
	row(multiplyFactor, c.many)
	if c.one.shadow > 0 && c.many.shadow > 0 && c.one.copierCPU > 0 {
		one := float64(c.one.copierCPU) / float64(c.one.shadow)
		many := float64(c.many.copierCPU) / float64(c.many.shadow)
		fmt.Fprintf(b, "\nA copy at `--multiply %d` costs the copier **%.2f×** what it costs at `--multiply 1`.\n\n", multiplyFactor, many/one)
	} else {
		b.WriteString("\nNot enough copied requests to tell the cost.\n\n")
	}
}
