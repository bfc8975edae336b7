package main

import (
	"fmt"
	"io"
	"math"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

// matchLogs reads both access logs and matches the shadow's requests to
// prod's, kind by kind.
func matchLogs(st *stage, ks []trafficKind, d *driver) (*demoResult, error) {
	prod, err := st.prod.requests()
	if err != nil {
		return nil, err
	}
	shadow, err := st.shadow.requests()
	if err != nil {
		return nil, err
	}
	res := &demoResult{labName: labPrefix + "-" + st.lab.ID}
	d.mu.Lock()
	for _, k := range ks {
		res.kinds = append(res.kinds, kindStat{key: k.key, title: k.title, sent: d.ok[k.key]})
	}
	d.mu.Unlock()
	idx := make(map[string]int)
	for i, k := range res.kinds {
		idx[k.key] = i
	}
	kindOf := func(path string) (int, bool) {
		key, _, _ := strings.Cut(strings.TrimPrefix(path, "/"), "/")
		i, ok := idx[key]
		return i, ok
	}

	want := make([]map[string]int, len(res.kinds)) // prod's requests not yet matched
	for i := range want {
		want[i] = make(map[string]int)
	}
	prodSrc := make(map[netip.Addr]bool)
	for _, e := range prod {
		res.prod++
		if !prodSrc[e.remote] {
			prodSrc[e.remote] = true
			res.prodSources = append(res.prodSources, e.remote)
		}
		if i, ok := kindOf(e.path); ok {
			res.kinds[i].prod++
			want[i][e.key()]++
		}
	}
	seen := make(map[netip.Addr]bool)
	for _, e := range shadow {
		res.shadow++
		if !seen[e.remote] {
			seen[e.remote] = true
			res.sources = append(res.sources, e.remote)
			if !lab.PoolV4.Contains(e.remote) && !lab.PoolV6.Contains(e.remote) {
				res.outOfPool = append(res.outOfPool, e.remote)
			}
		}
		i, ok := kindOf(e.path)
		if !ok {
			res.shadowOther++
			continue
		}
		k := &res.kinds[i]
		k.shadow++
		if want[i][e.key()] > 0 {
			want[i][e.key()]--
			k.copied++
			res.copied++
		}
	}
	for i := range res.kinds {
		k := &res.kinds[i]
		res.sent += k.sent
		for key, n := range want[i] {
			if n > 0 && len(k.missing) < maxErrsShown {
				k.missing = append(k.missing, key)
			}
		}
		sort.Strings(k.missing)
	}
	return res, nil
}

// report prints the outcome: per kind, sources, counters, final line.
func report(out io.Writer, st *stage, r *demoResult) {
	fmt.Fprintln(out)
	fmt.Fprintln(out, "requests: answered to the client; served by prod and by the shadow (their access logs);")
	fmt.Fprintln(out, "copied: prod's requests the shadow served with the same method, path and length, body included")
	w := len("total")
	for _, k := range r.kinds {
		w = max(w, len(k.title))
	}
	row := func(title, sent, prod, shadow, copied string) {
		fmt.Fprintf(out, "  %-*s %6s %6s %7s %7s\n", w, title, sent, prod, shadow, copied)
	}
	row("traffic", "client", "prod", "shadow", "copied")
	for _, k := range r.kinds {
		row(k.title, strconv.Itoa(k.sent), strconv.Itoa(k.prod), strconv.Itoa(k.shadow), pct(k.copied, k.prod))
	}
	row("total", strconv.Itoa(r.sent), strconv.Itoa(r.prod), strconv.Itoa(r.shadow), pct(r.copied, r.prod))
	if r.copied < r.prod {
		var miss []string
		for _, k := range r.kinds {
			for _, m := range k.missing {
				if len(miss) < maxErrsShown {
					miss = append(miss, m)
				}
			}
		}
		fmt.Fprintf(out, "  not copied (%d), for example: %s\n", r.prod-r.copied, strings.Join(miss, ", "))
	}
	if r.shadowOther > 0 {
		fmt.Fprintf(out, "  the shadow also served %d requests prod's traffic did not explain\n", r.shadowOther)
	}

	fmt.Fprintln(out)
	fmt.Fprintf(out, "prod saw the client's own addresses: %s\n", joinAddrs(r.prodSources, 4))
	if len(r.outOfPool) == 0 {
		fmt.Fprintf(out, "shadow saw %d source addresses, all in the client pools %s and %s\n", len(r.sources), lab.PoolV4, lab.PoolV6)
	} else {
		fmt.Fprintf(out, "shadow saw %d source addresses, %d OUTSIDE the client pools: %s\n",
			len(r.sources), len(r.outOfPool), joinAddrs(r.outOfPool, 6))
	}
	fmt.Fprintf(out, "  first few: %s\n", joinAddrs(firstPerFamily(r.sources, 3), 6))
	fmt.Fprintf(out, "packets from the shadow that reached the client: %d (its replies die at the assist)\n", r.leaks)

	fmt.Fprintln(out)
	if r.copyMetricsErr != nil {
		fmt.Fprintf(out, "copy daemon metrics: %v\n", r.copyMetricsErr)
	} else {
		m := r.copyMetrics
		ev := func(name string) int64 { return int64(m[`tcpshadow_copy_events_total{event="`+name+`"}`]) }
		fmt.Fprintf(out, "copy daemon counters (http://%s/metrics in %s):\n", st.copyMetricsAddr(), st.lab.Prod.Name())
		fmt.Fprintf(out, "  sessions  started %d, ended %s, %d ended ones still keep their flow's place\n",
			ev("sessions_started"), endedByReason(m), int64(m["tcpshadow_copy_sessions_active"]))
		fmt.Fprintf(out, "  packets   captured %d, sent to the shadow %d (%s), send errors %d, retransmits %d\n",
			ev("captured"), ev("packets_sent"), bytesStr(ev("bytes_sent")), ev("send_errors"), ev("retransmits"))
		fmt.Fprintf(out, "  replies   %d shadow reply headers from the agent\n", ev("replies"))
		var shed int64
		for _, s := range []string{"shed_queue_full", "shed_session_limit", "shed_memory", "shed_no_forged_port"} {
			shed += ev(s)
		}
		fmt.Fprintf(out, "  shed      %d\n", shed)
	}
	if r.agentMetErr != nil {
		fmt.Fprintf(out, "agent metrics: %v\n", r.agentMetErr)
	} else {
		m := r.agentMetrics
		fmt.Fprintf(out, "intercept agent: captured %d shadow replies, relayed %d\n",
			int64(m["tcpshadow_intercept_captured_total"]), int64(m["tcpshadow_intercept_relayed_total"]))
	}
	fmt.Fprintln(out)
	fmt.Fprintf(out, "prod served %d requests, shadow served %d (copied %s)\n", r.prod, r.shadow, pct(r.copied, r.prod))
}

// endedTotal sums the copier's sessions_ended counters.
func endedTotal(m map[string]float64) float64 {
	var n float64
	for k, v := range m {
		if strings.HasPrefix(k, "tcpshadow_copy_sessions_ended_total{") {
			n += v
		}
	}
	return n
}

// endedByReason renders "430 (closed 428, client_reset 2)".
func endedByReason(m map[string]float64) string {
	const prefix = `tcpshadow_copy_sessions_ended_total{reason="`
	type rc struct {
		reason string
		n      int64
	}
	var rs []rc
	var total int64
	for k, v := range m {
		if reason, ok := strings.CutPrefix(k, prefix); ok && v > 0 {
			rs = append(rs, rc{strings.TrimSuffix(reason, `"}`), int64(v)})
			total += int64(v)
		}
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].n > rs[j].n || rs[i].n == rs[j].n && rs[i].reason < rs[j].reason })
	var parts []string
	for _, r := range rs {
		parts = append(parts, fmt.Sprintf("%s %d", r.reason, r.n))
	}
	if len(parts) == 0 {
		return "0"
	}
	return fmt.Sprintf("%d (%s)", total, strings.Join(parts, ", "))
}

// pct renders part/whole rounded down to a tenth, so "100%" means all.
func pct(part, whole int) string {
	if whole == 0 {
		return "-"
	}
	p := math.Floor(float64(part)*1000/float64(whole)) / 10
	return strconv.FormatFloat(p, 'f', -1, 64) + "%"
}

func bytesStr(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// firstPerFamily returns up to k IPv4 then up to k IPv6 addresses, in
// order of appearance.
func firstPerFamily(addrs []netip.Addr, k int) []netip.Addr {
	var v4, v6 []netip.Addr
	for _, a := range addrs {
		if a.Is4() && len(v4) < k {
			v4 = append(v4, a)
		} else if !a.Is4() && len(v6) < k {
			v6 = append(v6, a)
		}
	}
	return append(v4, v6...)
}

func joinAddrs(addrs []netip.Addr, k int) string {
	if len(addrs) == 0 {
		return "none"
	}
	var s []string
	for i, a := range addrs {
		if i == k {
			s = append(s, fmt.Sprintf("… (%d more)", len(addrs)-k))
			break
		}
		s = append(s, a.String())
	}
	return strings.Join(s, ", ")
}
