package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// The bench's plot: CPU per copied request and copy ratio against the
// offered rate ("max" at the rate answered), for tcpshadow and, when it
// ran, the C tool, from the comparison's steps; without the C tool,
// from tcpshadow's series.

var plotColors = map[shape]string{keepAlive: "#1f77b4", connPerReq: "#d62728"}

// plotPanels returns the CPU and copy ratio panels of a run, nil when it
// has no copied step.
func plotPanels(r *benchResult) []plotPanel {
	cpu := plotPanel{title: "Copier + agent CPU per copied request", ylabel: "µs a copied request"}
	cp := plotPanel{title: "Copy ratio", ylabel: "% of prod's requests copied"}
	add := func(name, color string, dash bool, steps []*stepResult, rates []int) {
		lc := plotLine{name: name, color: color, dash: dash}
		lr := lc
		for i, s := range steps {
			if s == nil || s.prod == 0 {
				continue
			}
			x := float64(rates[i])
			if x == 0 {
				x = s.load.rate()
			}
			if n := s.copiedN(); n > 0 {
				lc.pts = append(lc.pts, plotPoint{x, float64(s.copierCPU+s.agentCPU) / float64(time.Microsecond) / float64(n)})
			}
			lr.pts = append(lr.pts, plotPoint{x, 100 * frac(s.copiedN(), s.prod)})
		}
		if len(lr.pts) > 0 {
			cpu.lines = append(cpu.lines, lc)
			cp.lines = append(cp.lines, lr)
		}
	}
	if len(r.vs) > 0 {
		for _, tool := range []string{toolOurs, toolC} {
			for _, sh := range []shape{keepAlive, connPerReq} {
				var steps []*stepResult
				var rates []int
				addrs := 1
				for _, v := range r.vs {
					if v.shape != sh {
						continue
					}
					// The runs' sum, as the table.
					c := costOf(v.runs[tool])
					steps = append(steps, &stepResult{copierCPU: c.copier, agentCPU: c.agent, shadow: c.copied, prod: c.prod,
						load: &loadResult{ok: int(c.answered), elapsed: time.Second}})
					rates = append(rates, v.rate)
					addrs = v.addrs
				}
				add(fmt.Sprintf("%s %s ×%d", tool, shortShape(sh), addrs), plotColors[sh], tool == toolC, steps, rates)
			}
		}
	} else {
		for _, s := range r.series {
			add(fmt.Sprintf("%s %s ×%d", toolOurs, shortShape(s.shape), s.addrs), plotColors[s.shape], s.addrs > 1, s.copied, s.rates)
		}
	}
	if len(cpu.lines) == 0 {
		return nil
	}
	return []plotPanel{cpu, cp}
}

// writePlot writes the run's plot to path and returns the markdown that
// shows it from the report at out ("" when there is nothing to plot).
func writePlot(r *benchResult, path, out string) (string, error) {
	panels := plotPanels(r)
	if panels == nil || path == "" {
		return "", nil
	}
	title := "tcpshadow lab bench, " + r.machine.commit
	if len(r.vs) > 0 {
		title = "tcpshadow (solid) against tcpcopy (dashed), " + r.machine.commit
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", fmt.Errorf("--plot: %w", err)
	}
	svg := renderPlot(title, "offered rate, requests or connections a second (log; max: as answered)", panels)
	if err := os.WriteFile(path, svg, 0o644); err != nil {
		return "", fmt.Errorf("--plot: %w", err)
	}
	rel, err := filepath.Rel(filepath.Dir(out), path)
	if err != nil {
		rel = path
	}
	rel = filepath.ToSlash(rel)
	what := "tcpshadow's series"
	if len(r.vs) > 0 {
		what = "the steps both tools ran (tcpshadow solid, tcpcopy dashed)"
	}
	return fmt.Sprintf("## Plot\n\n![CPU per copied request and copy ratio against offered rate](%s)\n\n[%s](%s), written by this run: copier + agent CPU per copied request and copy ratio against the offered rate (max: at the rate answered), of %s.\n\n",
		rel, rel, rel, what), nil
}
