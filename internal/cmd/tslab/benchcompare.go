package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

// The cost of comparison: the same keep-alive step with the copier
// comparing (its default) and not (--compare-prefix 0, which also stops
// the agent relaying payload), alternated so that the machine's other load
// falls on both alike.

// compareCostRuns is how many steps each setting gets (one in a smoke run).
const compareCostRuns = 2

// compareOff is the copy flag that turns comparison off.
const compareOff = "--compare-prefix=0"

// compareCost is the outcome: the steps with and without comparison.
type compareCost struct {
	rate    int
	on, off []*stepResult
}

// measureCompareCost restarts the copier between steps, without and with
// comparison, and leaves it running as it was.
func (b *bencher) measureCompareCost(ctx context.Context, rate int) (*compareCost, error) {
	s := series{shape: keepAlive, addrs: 1, conns: 50}
	c := &compareCost{rate: rate}
	secret, err := b.st.writeSecret()
	if err != nil {
		return nil, err
	}
	restart := func(extra []string) error {
		if err := b.st.copier.Stop(5 * time.Second); err != nil && !b.st.copier.Exited() {
			return fmt.Errorf("stop copier: %w", err)
		}
		if err := b.st.startCopier(ctx, stageConfig{bin: b.cfg.bin, copyArgs: extra}, b.st.copierArgs(lab.AssistV4, secret)); err != nil {
			return fmt.Errorf("restart copier: %w", err)
		}
		b.daemonsUp()
		return nil
	}
	for i := 0; i < b.cfg.compareRuns; i++ {
		for _, on := range []bool{false, true} {
			extra := append([]string(nil), b.cfg.copyArgs...)
			if !on {
				extra = append(extra, compareOff)
			}
			if err := restart(extra); err != nil {
				return nil, err
			}
			r, err := b.step(ctx, s, rate, true)
			if err != nil {
				return nil, err
			}
			if on {
				c.on = append(c.on, r)
			} else {
				c.off = append(c.off, r)
			}
		}
	}
	return c, nil
}

// perCopy is the copier's CPU per copied request over steps, in µs.
func perCopy(rs []*stepResult) (time.Duration, int) {
	var cpu time.Duration
	n := 0
	for _, r := range rs {
		cpu += r.copierCPU
		n += r.copiedN()
	}
	return cpu, n
}

// renderCompareCost writes the comparison's cost section.
func renderCompareCost(b *strings.Builder, c *compareCost) {
	if c == nil {
		return
	}
	fmt.Fprintf(b, "## The cost of comparison\n\n")
	fmt.Fprintf(b, "Keep-alive HTTP at %s req/s, 50 connections, 1 client address; the copier restarted before each step, with comparison (the default: a %s prefix of each reply) and without (`%s`), alternated, %d steps each.\n\n",
		rateName(c.rate), "64-byte", compareOff, len(c.on))
	b.WriteString("| comparison | steps | copied | copier µs a copy | agent µs a copy | pairs compared |\n|---|---|---|---|---|---|\n")
	row := func(name string, rs []*stepResult) {
		cpu, n := perCopy(rs)
		var agent time.Duration
		prod, pairs := 0, 0.0
		for _, r := range rs {
			agent += r.agentCPU
			prod += r.prod
			pairs += ev(r.copyDelta, "compare_pairs")
		}
		fmt.Fprintf(b, "| %s | %d | %s | %s | %s | %.0f |\n", name, len(rs), pct(n, prod), usPer(cpu, n), usPer(agent, n), pairs)
	}
	row("off", c.off)
	row("on", c.on)
	onCPU, onN := perCopy(c.on)
	offCPU, offN := perCopy(c.off)
	if onN > 0 && offN > 0 && offCPU > 0 {
		on := float64(onCPU) / float64(onN)
		off := float64(offCPU) / float64(offN)
		fmt.Fprintf(b, "\nComparison costs the copier **%s%%** per copied request (target: at most 15%%).\n\n", strconv.FormatFloat(100*(on-off)/off, 'f', 1, 64))
	} else {
		b.WriteString("\nNot enough copied requests to tell the cost.\n\n")
	}
}

func rateName(rate int) string {
	if rate == 0 {
		return "max"
	}
	return strconv.Itoa(rate)
}
