package main

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// keptUp is the share of the offered rate prod must answer for a paced
// step to count as below saturation.
const keptUp = 0.95

// Counters listed per step when they moved.
var (
	shedCounters = []string{"shed_queue_full", "shed_session_limit", "shed_memory", "shed_no_forged_port"}
	noteCounters = []string{"replies_queue_full", "send_errors", "retransmits", "client_syn_retransmits", "sessions_joined_midstream", "odd_packets"}
)

func ev(m map[string]float64, name string) float64 {
	return m[`tcpshadow_copy_events_total{event="`+name+`"}`]
}

func shedOf(m map[string]float64) float64 {
	var n float64
	for _, c := range shedCounters {
		n += ev(m, c)
	}
	return n
}

// renderReport formats a run as markdown: the machine, the summary against
// the reference and the targets, then one section per series.
func renderReport(r *benchResult) string {
	var b strings.Builder
	m := r.machine
	fmt.Fprintf(&b, "# tcpshadow lab benchmark\n\n")
	fmt.Fprintf(&b, "Written by `make bench` (`tslab bench`) on %s; the run took %v.", time.Now().UTC().Format("2006-01-02 15:04 MST"), r.took.Round(time.Second))
	if r.cfg.smoke {
		b.WriteString(" **Smoke run**: one short step per shape, no baseline; not for comparison.")
	}
	b.WriteString(" Compare numbers across commits only from like machines, and mind the load average: the lab shares the machine.\n\n")
	fmt.Fprintf(&b, "## Machine\n\n")
	fmt.Fprintf(&b, "| | |\n|---|---|\n")
	fmt.Fprintf(&b, "| CPU | %s, %d cores |\n", m.cpu, m.cores)
	fmt.Fprintf(&b, "| kernel | %s |\n", m.kernel)
	fmt.Fprintf(&b, "| Go | %s |\n", m.goVersion)
	fmt.Fprintf(&b, "| commit | %s |\n", m.commit)
	fmt.Fprintf(&b, "| daemon | %s |\n", m.daemon)
	fmt.Fprintf(&b, "| servers | nginx %s, 1 worker each, in prod and shadow namespaces |\n", m.nginx)
	if r.cfg.ctool != nil {
		fmt.Fprintf(&b, "| C tool | %s |\n", r.cfg.ctool.version)
	}
	fmt.Fprintf(&b, "| load average (1, 5, 15 min) | %s at the start, %s at the end |\n", m.loadStart, m.loadEnd)
	fmt.Fprintf(&b, "| steps | %v each |\n", r.cfg.step)
	if len(r.cfg.copyArgs) > 0 {
		fmt.Fprintf(&b, "| extra copy flags | `%s` |\n", strings.Join(r.cfg.copyArgs, " "))
	}
	if len(r.cfg.agentArgs) > 0 {
		fmt.Fprintf(&b, "| extra intercept flags | `%s` |\n", strings.Join(r.cfg.agentArgs, " "))
	}
	if other, n := otherLoad(r); n > 0 {
		fmt.Fprintf(&b, "| other users of the machine | %s of one core on average during the steps (column \"other\")", pctOf(other, time.Duration(n)))
		if other > time.Duration(n)/4 {
			b.WriteString(": **the numbers are noisy**, other work competed for the CPUs")
		}
		b.WriteString(" |\n")
	}
	b.WriteString("\n")

	b.WriteString(`## How it is measured

- Sealed namespace lab (client → prod → shadow, assist): ` + "`tcpshadow copy --workers 2`" + ` on prod, ` + "`tcpshadow intercept`" + ` on the assist host, nginx in prod and the shadow.
- Load: open loop from the tslab process (Go) at the offered rate; "max" is as fast as the connections go. Keep-alive: 50 connections (nginx closes each after 1000 requests, its default). One connection per request: ` + "`Connection: close`" + `, the server closes first, at most 64 in flight. Client addresses: 198.18.0.2, and 198.18.0.3 onwards when more than one, round robin.
- Answered: responses with prod's body per second of the step. Latency: from the write (keep-alive) or the dial (one connection per request) to the end of the body, in ms.
- Copied: shadow requests / prod requests of the step, from the two access logs (paths carry the step). Floored: 100% means every one.
- CPU: utime + stime from /proc, over the load for the utilisation table (% of one core; the machine has ` + strconv.Itoa(m.cores) + `), and from the step's start until the shadow caught up for the daemons' cost per copied request. "other" is the machine's busy time not charged to the processes listed: kernel work elsewhere and other users of the machine.
- Peak RSS: VmHWM of each daemon at the end of the step (a peak since start). Shed and pcap drops: increases of the copier's counters (` + "`shed_*`" + `, ` + "`tcpshadow_capture_kernel_dropped_total`" + `) and the agent's (` + "`tcpshadow_intercept_kernel_dropped_total`" + `).

`)
	renderSummary(&b, r)
	renderVersus(&b, r.cfg.ctool, r.vs, r.cfg.vsRuns)
	b.WriteString(r.plotMD)
	for i := range r.series {
		if r.cfg.multiplyOnly {
			break // not run
		}
		renderSeries(&b, &r.series[i], r.cfg.baseline)
	}
	renderBulk(&b, r.bulk)
	renderH2(&b, r.h2)
	renderCompareCost(&b, r.compare)
	renderMultiplyCost(&b, r.multiply)
	renderReplay(&b, r.replay, r.cfg.replayRate, r.cfg.step)
	renderModes(&b, r.cfg, r.modes)
	if r.idle != nil {
		in := r.idle
		fmt.Fprintf(&b, "## Idle sessions\n\n")
		fmt.Fprintf(&b, "%d keep-alive connections, one request each, held idle %v on a fresh copier (%d failed): the copier held %.0f more sessions, its RSS went %s → %s, **%s a session** (an upper bound: the Go heap grows in steps).\n\n",
			in.opened, idleHold, in.errs, in.sessions, mib(in.rssBefore), mib(in.rssWith), kib(in.perSession()))
	}
	for _, m := range r.modes {
		for _, w := range m.warnings {
			r.warnings = append(r.warnings, m.mode+": "+w)
		}
	}
	if len(r.warnings) > 0 {
		b.WriteString("## Warnings\n\n")
		for _, w := range r.warnings {
			fmt.Fprintf(&b, "- %s\n", w)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// findSeries returns the series of shape from addrs addresses, or nil.
func findSeries(r *benchResult, sh shape, addrs int) *seriesResult {
	for i := range r.series {
		if s := &r.series[i]; s.shape == sh && s.addrs == addrs {
			return s
		}
	}
	return nil
}

// at returns the copier step at rate, or nil.
func (s *seriesResult) at(rate int) (alone, copied *stepResult) {
	for i, rt := range s.rates {
		if rt == rate {
			if i < len(s.alone) {
				alone = s.alone[i]
			}
			if i < len(s.copied) {
				copied = s.copied[i]
			}
		}
	}
	return alone, copied
}

// belowSaturation reports whether prod kept up with step i's offered rate
// (alone when measured, else with the copier).
func (s *seriesResult) belowSaturation(i int) bool {
	if s.rates[i] == 0 {
		return false
	}
	r := s.copied[i]
	if i < len(s.alone) {
		r = s.alone[i]
	}
	return r.load.rate() >= keptUp*float64(s.rates[i])
}

// copySummary is "lowest X% up to Y/s; at max Z% of W/s".
func copySummary(s *seriesResult, unit string) string {
	if s == nil || len(s.copied) == 0 {
		return "not run"
	}
	var parts []string
	lowest, lowestAt, upTo := math.Inf(1), 0, 0.0
	for i, c := range s.copied {
		if !s.belowSaturation(i) {
			continue
		}
		if f := frac(c.copiedN(), c.prod); f < lowest {
			lowest, lowestAt = f, s.rates[i]
		}
		upTo = max(upTo, c.load.rate())
	}
	if !math.IsInf(lowest, 1) {
		parts = append(parts, fmt.Sprintf("lowest %s (at %s) over the steps prod kept up with, up to %.0f %s answered",
			ratio(int(lowest*1e6), 1e6), rateStr(lowestAt), upTo, unit))
	}
	for i, c := range s.copied {
		if !s.belowSaturation(i) {
			parts = append(parts, fmt.Sprintf("%s at %s (%.0f %s answered)", ratio(c.copiedN(), c.prod), rateStr(s.rates[i]), c.load.rate(), unit))
		}
	}
	return strings.Join(parts, "; ")
}

// otherLoad returns the machine's busy time not charged to the bench's
// processes, summed over the steps as a fraction of their windows: other
// ÷ n is the average share of one core.
func otherLoad(r *benchResult) (other time.Duration, n int64) {
	var sum float64
	var k int
	for _, s := range r.series {
		for _, x := range append(append([]*stepResult{}, s.alone...), s.copied...) {
			if x.window <= 0 {
				continue
			}
			var charged time.Duration
			for _, role := range cpuRoles {
				charged += x.cpu[role]
			}
			sum += float64(max(0, x.busy-charged)) / float64(x.window)
			k++
		}
	}
	if k == 0 {
		return 0, 0
	}
	const unit = 1_000_000
	return time.Duration(sum / float64(k) * unit), unit
}

func renderSummary(b *strings.Builder, r *benchResult) {
	b.WriteString("## Against the reference and the targets\n\n")
	b.WriteString("Reference: the old C tool (tcpcopy) on the same kind of 2-core lab, nginx with 1 worker each, 20 s runs. Targets: from the issue.\n\n")
	b.WriteString("| figure | reference (tcpcopy) | target | this run |\n|---|---|---|---|\n")
	row := func(fig, ref, target, ours string) {
		fmt.Fprintf(b, "| %s | %s | %s | %s |\n", fig, ref, target, ours)
	}
	ka1, ka32 := findSeries(r, keepAlive, 1), findSeries(r, keepAlive, maxClientAddrs)
	c1, c32 := findSeries(r, connPerReq, 1), findSeries(r, connPerReq, maxClientAddrs)
	row("keep-alive, 1 address: copied", "100% up to ~37k req/s (the machine's limit)", "≥ 99.9% up to prod's saturation; beyond, gradual", copySummary(ka1, "req/s"))
	row("keep-alive, 32 addresses: copied", "–", "as above", copySummary(ka32, "req/s"))
	row("keep-alive: prod alone, as fast as possible", "~63k req/s", "–", maxAlone(ka1, "req/s"))
	row("keep-alive at 10k req/s: copier + agent CPU a copied request", "21 + 7.5 = 28.5 µs", "≤ 14.3 µs", costAt(ka1, 10000))
	row("keep-alive at 1k req/s: copier CPU a copied request", "79 µs", "no ballooning at low rates", copierAt(ka1, 1000))
	row("copier peak RSS (agent's)", "28 MB", "≤ 1 KiB an idle session + buffered payload", peakRSS(r))
	if w := r.idleCPU.window; w > 0 {
		row("copier (agent) CPU with no traffic", "–", "small next to the per-request cost at 1k/s", fmt.Sprintf("%s (%s) of a core", pctOf(r.idleCPU.copier, w), pctOf(r.idleCPU.agent, w)))
	}
	row("one connection per request, 1 address: copied", "≥ 99% up to ~7k conn/s; 86–91% at ~9k", "≥ 99.9% up to prod's saturation; beyond, gradual", copySummary(c1, "conn/s"))
	row("one connection per request, 32 addresses: copied", "–", "as above", copySummary(c32, "conn/s"))
	row("one connection per request: prod alone, as fast as possible", "~18k conn/s", "–", maxAlone(c1, "conn/s"))
	row("one connection per request at 1k conn/s: copier CPU a copied request", "175 µs", "no ballooning at low rates", copierAt(c1, 1000))
	if r.idle != nil {
		row("memory an idle session", "–", "≤ 1 KiB", kib(r.idle.perSession()))
	}
	b.WriteString("\n")
}

func maxAlone(s *seriesResult, unit string) string {
	if s == nil {
		return "not run"
	}
	a, c := s.at(0)
	switch {
	case a != nil:
		return fmt.Sprintf("%.0f %s (load generator %s of a core, machine %s of one core busy)", a.load.rate(), unit, pctOf(a.cpu[roleLoad], a.window), pctOf(a.busy, a.window))
	case c != nil:
		return fmt.Sprintf("not measured; %.0f %s with the copier", c.load.rate(), unit)
	}
	return "not run"
}

func costAt(s *seriesResult, rate int) string {
	if s == nil {
		return "not run"
	}
	_, c := s.at(rate)
	if c == nil || c.copiedN() == 0 {
		return "not run"
	}
	return fmt.Sprintf("%s + %s = **%s**", usPer(c.copierCPU, c.copiedN()), usPer(c.agentCPU, c.copiedN()), usPer(c.copierCPU+c.agentCPU, c.copiedN()))
}

func copierAt(s *seriesResult, rate int) string {
	if s == nil {
		return "not run"
	}
	_, c := s.at(rate)
	if c == nil || c.copiedN() == 0 {
		return "not run"
	}
	return fmt.Sprintf("%s (agent %s)", usPer(c.copierCPU, c.copiedN()), usPer(c.agentCPU, c.copiedN()))
}

func peakRSS(r *benchResult) string {
	var cp, ag int64
	for _, s := range r.series {
		for _, c := range s.copied {
			cp, ag = max(cp, c.copierHWM), max(ag, c.agentHWM)
		}
	}
	if cp == 0 {
		return "not run"
	}
	return fmt.Sprintf("%s (%s)", mib(cp), mib(ag))
}

func renderSeries(b *strings.Builder, s *seriesResult, baseline bool) {
	unit := "req/s"
	if s.shape == connPerReq {
		unit = "conn/s"
	}
	fmt.Fprintf(b, "## %s\n\n", capitalise(s.title()))
	fmt.Fprintf(b, "| offered %s | prod alone: answered | p50 / p99 ms | with copier: answered | p50 / p99 ms | copied | copier µs a copy | agent µs a copy | both, CPU s per 100k | peak RSS copier / agent (copier now) | shed | pcap drops copier / agent | client errors |\n", unit)
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for i, rate := range s.rates {
		var a, c *stepResult
		if i < len(s.alone) {
			a = s.alone[i]
		}
		if i < len(s.copied) {
			c = s.copied[i]
		}
		aAns, aLat := "–", "–"
		if a != nil {
			aAns, aLat = fmt.Sprintf("%.0f", a.load.rate()), latStr(a.load)
		}
		cols := []string{rateStr(rate), aAns, aLat}
		if c == nil {
			cols = append(cols, "–", "–", "–", "–", "–", "–", "–", "–", "–", "–")
		} else {
			n := c.copiedN()
			per100k := "–"
			if n > 0 {
				per100k = fmt.Sprintf("%.2f", (c.copierCPU+c.agentCPU).Seconds()*1e5/float64(n))
			}
			cols = append(cols, fmt.Sprintf("%.0f", c.load.rate()), latStr(c.load), ratio(n, c.prod),
				usPer(c.copierCPU, n), usPer(c.agentCPU, n), per100k,
				mib(c.copierHWM)+" / "+mib(c.agentHWM)+" ("+mib(c.copierRSS)+")",
				fmt.Sprintf("%.0f", shedOf(c.copyDelta)),
				fmt.Sprintf("%.0f / %.0f", c.copyDelta["tcpshadow_capture_kernel_dropped_total"], c.agentDel["tcpshadow_intercept_kernel_dropped_total"]))
		}
		errs := 0
		for _, x := range []*stepResult{a, c} {
			if x != nil {
				errs += x.load.errs
			}
		}
		cols = append(cols, strconv.Itoa(errs))
		fmt.Fprintf(b, "| %s |\n", strings.Join(cols, " | "))
	}
	b.WriteString("\nWhere the CPU went during the load (% of one core):\n\n")
	b.WriteString("| offered | run | machine busy | load generator | nginx prod | nginx shadow | copier | agent | other | not offered | shadow caught up after |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|\n")
	for i, rate := range s.rates {
		for _, x := range []struct {
			name string
			r    []*stepResult
		}{{"prod alone", s.alone}, {"with copier", s.copied}} {
			if i >= len(x.r) {
				continue
			}
			r := x.r[i]
			w := r.window
			var charged time.Duration
			cols := []string{rateStr(rate), x.name, pctOf(r.busy, w)}
			for _, role := range cpuRoles {
				charged += r.cpu[role]
				if !r.copier && (role == roleCopier || role == roleAgent) {
					cols = append(cols, "–")
					continue
				}
				cols = append(cols, pctOf(r.cpu[role], w))
			}
			cols = append(cols, pctOf(max(0, r.busy-charged), w), strconv.Itoa(r.load.missed))
			if r.copier {
				cols = append(cols, r.catchUp.Round(100*time.Millisecond).String())
			} else {
				cols = append(cols, "–")
			}
			fmt.Fprintf(b, "| %s |\n", strings.Join(cols, " | "))
		}
	}
	var notes []string
	for i, c := range s.copied {
		if n := counterNotes(c); n != "" {
			notes = append(notes, fmt.Sprintf("- %s: %s", rateStr(s.rates[i]), n))
		}
	}
	if len(notes) > 0 {
		b.WriteString("\nCopier counters per step (with copier):\n\n")
		b.WriteString(strings.Join(notes, "\n"))
		b.WriteString("\n")
	}
	b.WriteString("\n")
}

// counterNotes lists the copier's and agent's counters that moved in a
// step: sessions started and ended by reason, sheds, and trouble.
func counterNotes(r *stepResult) string {
	if r == nil || r.copyDelta == nil {
		return ""
	}
	var parts []string
	parts = append(parts, fmt.Sprintf("sessions started %.0f, ended %s", ev(r.copyDelta, "sessions_started"), endedByReason(r.copyDelta)))
	if n := float64(r.copiedN()); n > 0 {
		// Packets a copied request costs each way: what drives the CPU.
		parts = append(parts, fmt.Sprintf("per copy: %.2f captured, %.2f sent, %.2f replies",
			ev(r.copyDelta, "captured")/n, ev(r.copyDelta, "packets_sent")/n, ev(r.copyDelta, "replies")/n))
	}
	for _, c := range append(append([]string{}, shedCounters...), noteCounters...) {
		if v := ev(r.copyDelta, c); v > 0 {
			parts = append(parts, fmt.Sprintf("%s %.0f", c, v))
		}
	}
	for _, c := range []string{"tcpshadow_capture_kernel_dropped_total", "tcpshadow_capture_interface_dropped_total", "tcpshadow_agent_bad_frames_total"} {
		if v := r.copyDelta[c]; v > 0 {
			parts = append(parts, fmt.Sprintf("%s %.0f", strings.TrimPrefix(c, "tcpshadow_"), v))
		}
	}
	var agent []string
	for k, v := range r.agentDel {
		if v > 0 && (strings.Contains(k, "dropped") || strings.Contains(k, "rejected") || strings.Contains(k, "conflict") || strings.Contains(k, "outside_pool") || strings.Contains(k, "expired") || strings.Contains(k, "no_owner")) {
			agent = append(agent, fmt.Sprintf("%s %.0f", strings.TrimSuffix(strings.TrimPrefix(k, "tcpshadow_intercept_"), "_total"), v))
		}
	}
	sort.Strings(agent)
	if len(agent) > 0 {
		parts = append(parts, "agent "+strings.Join(agent, ", "))
	}
	return strings.Join(parts, "; ")
}

func capitalise(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func rateStr(rate int) string {
	switch {
	case rate == 0:
		return "max"
	case rate%1000 == 0:
		return strconv.Itoa(rate/1000) + "k"
	}
	return strconv.Itoa(rate)
}

func msStr(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 2, 64)
}

func latStr(l *loadResult) string {
	if len(l.lat) == 0 {
		return "–"
	}
	return msStr(l.quantile(.5)) + " / " + msStr(l.quantile(.99))
}

func frac(part, whole int) float64 {
	if whole == 0 {
		return 0
	}
	return float64(part) / float64(whole)
}

// ratio renders part/whole floored to a hundredth of a percent, so 100%
// means every one.
func ratio(part, whole int) string {
	if whole == 0 {
		return "–"
	}
	p := math.Floor(float64(part)*10000/float64(whole)) / 100
	return strconv.FormatFloat(p, 'f', -1, 64) + "%"
}

func usPer(cpu time.Duration, n int) string {
	if n == 0 {
		return "–"
	}
	us := float64(cpu) / float64(time.Microsecond) / float64(n)
	if us < 10 {
		return strconv.FormatFloat(us, 'f', 1, 64)
	}
	return strconv.FormatFloat(us, 'f', 0, 64)
}

func pctOf(part, whole time.Duration) string {
	if whole <= 0 {
		return "–"
	}
	return strconv.FormatFloat(100*float64(part)/float64(whole), 'f', 0, 64) + "%"
}

func mib(n int64) string {
	return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) + " MiB"
}

func kib(n float64) string {
	return strconv.FormatFloat(n/1024, 'f', 2, 64) + " KiB"
}
