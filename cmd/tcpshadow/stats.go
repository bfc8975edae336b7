package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/spf13/cobra"

	"github.com/tcpshadow/tcpshadow/tcpstate"
)

type statsOptions struct {
	from    string
	all     bool
	timeout time.Duration
	// client fetches the metrics; nil means a plain http.Client. Tests put
	// an in-memory transport here.
	client *http.Client
}

func newStatsCmd() *cobra.Command { return newStatsCmdWith(&statsOptions{}) }

func newStatsCmdWith(o *statsOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "stats --from URL [--all]",
		Short: "Show a running daemon's counters as a table, stage by stage",
		Long: `stats reads the Prometheus endpoint of a copy daemon or an intercept agent
(its --metrics address) and prints the same numbers grouped by stage, in the
order a packet meets them:

  copy:       capture → engine → sessions → agent link
  intercept:  capture → relay → peers

plus the pcap dump when one is on. Counters at zero are left out unless
--all is given; gauges are always shown.

  tcpshadow stats --from 198.18.0.1:9464
  tcpshadow stats --from http://198.18.1.3:9464/metrics --all`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			u, err := o.url()
			if err != nil {
				return err
			}
			fams, err := o.fetch(cmd.Context(), u)
			if err != nil {
				return err
			}
			return writeStats(cmd.OutOrStdout(), u, fams, o.all)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.from, "from", "", "the daemon's metrics address: HOST:PORT or a URL (path default /metrics)")
	f.BoolVar(&o.all, "all", false, "show counters at zero too")
	f.DurationVar(&o.timeout, "timeout", 5*time.Second, "give up fetching after this long")
	return cmd
}

// url validates --from and completes it: http scheme and /metrics path
// by default.
func (o *statsOptions) url() (string, error) {
	if o.from == "" {
		return "", errors.New("--from is required: the daemon's --metrics address, e.g. 198.18.0.1:9464")
	}
	if o.timeout <= 0 {
		return "", fmt.Errorf("--timeout %v: must be positive", o.timeout)
	}
	s := o.from
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("--from %q: want HOST:PORT or http://HOST:PORT/PATH: %w", o.from, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("--from %q: want an http or https URL", o.from)
	}
	if u.Hostname() == "" {
		return "", fmt.Errorf("--from %q: want HOST:PORT or http://HOST:PORT/PATH: no host", o.from)
	}
	if p := u.Port(); p != "" {
		if err := checkPort(p); err != nil {
			return "", fmt.Errorf("--from %q: %w", o.from, err)
		}
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/metrics"
	}
	return u.String(), nil
}

// maxExposition bounds what is read from the endpoint.
const maxExposition = 32 << 20

// fetch reads and parses the text exposition at u.
func (o *statsOptions) fetch(ctx context.Context, u string) (map[string]*dto.MetricFamily, error) {
	c := o.client
	if c == nil {
		c = &http.Client{}
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("--from: %w", err)
	}
	// The classic text format: what the parser reads.
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch metrics %s: %s", u, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(io.LimitReader(resp.Body, maxExposition))
	if err != nil {
		return nil, fmt.Errorf("parse metrics from %s: %w", u, err)
	}
	return fams, nil
}

// statRow is one number of the table.
type statRow struct {
	name  string // full metric name
	label string // the one label's value, if any
	gauge bool
	value float64
}

// stage is a group of rows in datapath order.
type stage struct {
	title string
	rows  []statRow
}

// writeStats writes the tcpshadow metrics of fams grouped by stage.
func writeStats(w io.Writer, src string, fams map[string]*dto.MetricFamily, all bool) error {
	rows := make(map[string]statRow) // key: name + "\x00" + label
	for name, fam := range fams {
		if !strings.HasPrefix(name, "tcpshadow_") {
			continue
		}
		for _, m := range fam.GetMetric() {
			r := statRow{name: name}
			for _, lp := range m.GetLabel() {
				r.label = lp.GetValue()
			}
			if ls := m.GetLabel(); len(ls) > 1 {
				// The comparison's metrics have several labels (map, side,
				// class): the row needs its name and all of them.
				kv := []string{statRow{name: name}.display()}
				for _, lp := range ls {
					kv = append(kv, lp.GetName()+"="+lp.GetValue())
				}
				r.label = strings.Join(kv, " ")
			}
			switch {
			case m.Counter != nil:
				r.value = m.GetCounter().GetValue()
			case m.Gauge != nil:
				r.value, r.gauge = m.GetGauge().GetValue(), true
			case m.Untyped != nil:
				r.value = m.GetUntyped().GetValue()
			default:
				continue
			}
			rows[r.name+"\x00"+r.label] = r
		}
	}
	var role string
	var stages []stage
	switch {
	case hasPrefix(rows, "tcpshadow_copy_"):
		role, stages = "copy daemon", copyStages(rows)
	case hasPrefix(rows, "tcpshadow_intercept_"):
		role, stages = "intercept agent", interceptStages(rows)
	default:
		return fmt.Errorf("%s: no tcpshadow copy or intercept metrics there", src)
	}
	stages = append(stages, stage{"dump", take(rows, prefixed(rows, "tcpshadow_dump_"))})
	if len(rows) > 0 {
		// Metrics this version does not know still get shown.
		keys := make([]string, 0, len(rows))
		for k := range rows {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		stages = append(stages, stage{"other", take(rows, keys)})
	}

	var b strings.Builder
	fmt.Fprintf(&b, "%s at %s\n", role, src)
	width := 0
	for _, st := range stages {
		for _, r := range st.rows {
			width = max(width, len(r.display()))
		}
	}
	for _, st := range stages {
		if len(st.rows) == 0 {
			continue // nothing exported for it, e.g. no dump
		}
		fmt.Fprintf(&b, "\n%s\n", st.title)
		shown := 0
		for _, r := range st.rows {
			if r.value == 0 && !r.gauge && !all {
				continue
			}
			fmt.Fprintf(&b, "  %-*s  %16s\n", width, r.display(), formatValue(r.value))
			shown++
		}
		if shown == 0 {
			b.WriteString("  (all zero)\n")
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// display is a row's name in the table: the metric name without its
// stage prefix and _total, or its label.
func (r statRow) display() string {
	if r.label != "" {
		if strings.HasSuffix(r.name, "_ended_total") {
			return "ended " + r.label
		}
		return r.label
	}
	n := strings.TrimSuffix(r.name, "_total")
	for _, p := range []string{"tcpshadow_copy_", "tcpshadow_intercept_", "tcpshadow_capture_", "tcpshadow_agent_", "tcpshadow_dump_", "tcpshadow_"} {
		if strings.HasPrefix(n, p) {
			return strings.TrimPrefix(n, p)
		}
	}
	return n
}

func formatValue(v float64) string {
	if v == float64(int64(v)) {
		return strconv.FormatInt(int64(v), 10)
	}
	return strconv.FormatFloat(v, 'g', 6, 64)
}

func hasPrefix(rows map[string]statRow, p string) bool {
	for k := range rows {
		if strings.HasPrefix(k, p) {
			return true
		}
	}
	return false
}

// prefixed returns the row keys starting with p, sorted.
func prefixed(rows map[string]statRow, p string) []string {
	var keys []string
	for k := range rows {
		if strings.HasPrefix(k, p) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}

// take removes the rows with keys from rows and returns them in the
// keys' order; missing ones are skipped.
func take(rows map[string]statRow, keys []string) []statRow {
	var out []statRow
	for _, k := range keys {
		if r, ok := rows[k]; ok {
			out = append(out, r)
			delete(rows, k)
		}
	}
	return out
}

func plain(names ...string) []string {
	keys := make([]string, len(names))
	for i, n := range names {
		keys[i] = n + "\x00"
	}
	return keys
}

func labelled(name string, values []string) []string {
	keys := make([]string, len(values))
	for i, v := range values {
		keys[i] = name + "\x00" + v
	}
	return keys
}

func copyStages(rows map[string]statRow) []stage {
	var engine, sessions []string
	for _, ev := range tcpstate.CounterNames() {
		if strings.HasPrefix(ev, "sessions_") {
			sessions = append(sessions, ev)
		} else {
			engine = append(engine, ev)
		}
	}
	const events = "tcpshadow_copy_events_total"
	capture := take(rows, plain("tcpshadow_capture_kernel_received_total", "tcpshadow_capture_kernel_dropped_total",
		"tcpshadow_capture_interface_dropped_total", "tcpshadow_capture_non_ip_total"))
	capture = append(capture, take(rows, prefixed(rows, "tcpshadow_capture_"))...)
	capture = append(capture, take(rows, prefixed(rows, "tcpshadow_mirror_"))...)
	eng := take(rows, labelled(events, engine))
	eng = append(eng, take(rows, prefixed(rows, "tcpshadow_datalink_"))...)
	sess := take(rows, plain("tcpshadow_copy_sessions_active", "tcpshadow_copy_buffered_bytes"))
	sess = append(sess, take(rows, labelled(events, sessions))...)
	sess = append(sess, take(rows, labelled("tcpshadow_copy_sessions", tcpstate.StateNames()))...)
	sess = append(sess, take(rows, labelled("tcpshadow_copy_sessions_ended_total", tcpstate.EndReasonNames()))...)
	sess = append(sess, take(rows, prefixed(rows, "tcpshadow_copy_shadow_rejected_total"))...)
	agent := take(rows, plain("tcpshadow_agent_connected", "tcpshadow_agent_connects_total",
		"tcpshadow_agent_disconnects_total", "tcpshadow_agent_connect_failures_total",
		"tcpshadow_agent_registrations_total", "tcpshadow_agent_deregistrations_total",
		"tcpshadow_agent_resyncs_total", "tcpshadow_agent_flows", "tcpshadow_agent_reply_frames_total",
		"tcpshadow_agent_replies_total", "tcpshadow_agent_bad_frames_total"))
	agent = append(agent, take(rows, prefixed(rows, "tcpshadow_agent_"))...)
	cmp := take(rows, prefixed(rows, "tcpshadow_compare_"))
	controls := take(rows, prefixed(rows, "tcpshadow_copy_control"))
	return []stage{{"controls", controls}, {"capture", capture}, {"engine", eng}, {"sessions", sess},
		{"agent link", agent}, {"comparison", cmp}}
}

func interceptStages(rows map[string]statRow) []stage {
	i := func(names ...string) []string {
		for k, n := range names {
			names[k] = "tcpshadow_intercept_" + n
		}
		return plain(names...)
	}
	return []stage{
		{"capture", take(rows, i("kernel_received_total", "captured_total", "bad_total", "kernel_dropped_total",
			"interface_dropped_total", "non_ip_total", "ring_bytes", "ring_grown_total", "ring_grow_failed_total",
			"ring_cut_total", "ring_duplicates_total"))},
		{"relay", take(rows, i("relayed_total", "outside_pools_total", "no_owner_total", "parked_total", "parked_delivered_total",
			"parked_expired_total", "dropped_queue_total", "dropped_peer_total", "flows", "flows_rejected_total",
			"flows_conflict_total", "flows_outside_pool_total", "flows_local_total", "flows_expired_total", "batches_total",
			"h2_walked_total", "h2_records_total", "h2_dropped_total", "h2_lost_total", "h2_not_h2_total"))},
		{"peers", take(rows, i("peers", "peers_refused_total", "peer_errors_total", "conns_shed_total",
			"accept_errors_total", "bad_frames_total", "peer_throttled_total"))},
	}
}
