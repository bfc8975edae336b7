package compare

import (
	"cmp"
	"encoding/json"
	"net/http"
	"slices"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/metrics"
)

// ReportTool is the snapshot's "tool" field: how `tcpshadow report` knows
// it is talking to a copy daemon.
const ReportTool = "tcpshadow"

// topShown is how many divergent requests a snapshot lists per map.
const topShown = 10

// Report is the JSON snapshot (/report.json) and what `tcpshadow report`
// prints.
type Report struct {
	Tool      string      `json:"tool"`
	Generated time.Time   `json:"generated"`
	Dropped   uint64      `json:"dropped"` // pairs refused by full Recorders
	Maps      []MapReport `json:"maps"`
}

// MapReport is one map's comparison.
type MapReport struct {
	Map        string     `json:"map"`
	Protocol   string     `json:"protocol"`
	Requests   uint64     `json:"requests"`
	Prod       SideReport `json:"prod"`
	Shadow     SideReport `json:"shadow"`
	Mismatches []Mismatch `json:"mismatches"`
	// Matched counts the pairs whose two classes were the same, by class:
	// the mismatch matrix's diagonal.
	Matched      map[string]uint64 `json:"matched"`
	TopDivergent []Divergent       `json:"top_divergent"`
	// Slower counts the requests both answered, the shadow at least
	// SlowerMargin and twice prod's time later; TopSlower names them.
	Slower    uint64      `json:"slower"`
	TopSlower []Divergent `json:"top_slower"`
}

// SideReport is one side's classes and latency.
type SideReport struct {
	Classes   map[string]uint64 `json:"classes"`
	Answered  uint64            `json:"answered"` // responses with a latency
	LatencyMS Quantiles         `json:"latency_ms"`
	// Histogram is the latency distribution: the non-empty buckets, by
	// upper bound in milliseconds (0 for the overflow bucket, last).
	Histogram []Bucket `json:"histogram"`
}

// Quantiles are latencies in milliseconds.
type Quantiles struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// Bucket is one histogram bucket: responses with a latency up to LeMS
// and above the previous bucket's.
type Bucket struct {
	LeMS  float64 `json:"le_ms"`
	Count uint64  `json:"count"`
}

// Mismatch counts pairs whose classes differed.
type Mismatch struct {
	Prod   string `json:"prod"`
	Shadow string `json:"shadow"`
	Count  uint64 `json:"count"`
}

// Divergent is one of the requests whose classes differed most often,
// with the last such pair's classes and latencies.
type Divergent struct {
	Request  string  `json:"request"`
	Count    uint64  `json:"count"`
	Prod     string  `json:"prod"`
	Shadow   string  `json:"shadow"`
	ProdMS   float64 `json:"prod_ms"`
	ShadowMS float64 `json:"shadow_ms"`
}

// Snapshot returns the aggregate so far.
func (c *Comparer) Snapshot() Report {
	r := Report{Tool: ReportTool, Generated: c.now().UTC(), Dropped: c.Dropped(), Maps: []MapReport{}}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range c.maps {
		mr := MapReport{Map: m.name, Protocol: m.protocolLocked().String(), Requests: m.requests,
			Prod: m.sides[Prod].report(), Shadow: m.sides[Shadow].report(),
			Mismatches: []Mismatch{}, Matched: map[string]uint64{}, Slower: m.slower}
		for k, n := range m.pairs {
			if k[0] == k[1] {
				mr.Matched[k[0]] = n
				continue
			}
			mr.Mismatches = append(mr.Mismatches, Mismatch{Prod: k[0], Shadow: k[1], Count: n})
		}
		slices.SortFunc(mr.Mismatches, func(a, b Mismatch) int {
			return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.Prod, b.Prod), cmp.Compare(a.Shadow, b.Shadow))
		})
		mr.TopDivergent, mr.TopSlower = topOf(m.divergent), topOf(m.slowest)
		r.Maps = append(r.Maps, mr)
	}
	return r
}

// topOf lists the topShown most counted summaries of top. Locked.
func topOf(top map[string]*divergent) []Divergent {
	out := []Divergent{}
	for k, d := range top {
		out = append(out, Divergent{Request: k, Count: d.count, Prod: d.prod,
			Shadow: d.shadow, ProdMS: d.prodS * 1e3, ShadowMS: d.shadowS * 1e3})
	}
	slices.SortFunc(out, func(a, b Divergent) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.Request, b.Request))
	})
	return out[:min(len(out), topShown)]
}

// protocolLocked is the map's protocol as reported: configured, detected,
// or auto while nothing told.
func (m *mapStats) protocolLocked() Protocol {
	if m.configured != Auto {
		return m.configured
	}
	return m.detected
}

func (st *sideStats) report() SideReport {
	h := &st.latency
	sr := SideReport{Classes: make(map[string]uint64, len(st.classes)), Answered: h.count,
		LatencyMS: Quantiles{P50: h.quantile(0.5) * 1e3, P90: h.quantile(0.9) * 1e3, P99: h.quantile(0.99) * 1e3, Max: h.max * 1e3},
		Histogram: []Bucket{}}
	for k, v := range st.classes {
		sr.Classes[k] = v
	}
	for i, n := range h.counts {
		if n == 0 {
			continue
		}
		le := 0.0
		if i < len(latencyBounds) {
			le = latencyBounds[i] * 1e3
		}
		sr.Histogram = append(sr.Histogram, Bucket{LeMS: le, Count: n})
	}
	return sr
}

// Samples returns the comparison's Prometheus samples: a metrics.Source.
func (c *Comparer) Samples() []metrics.Sample {
	const p = "tcpshadow_compare_"
	out := []metrics.Sample{
		{Name: p + "pairs_dropped_total", Help: "Pairs the datapath could not hand over: its queue to the comparer was full.", Value: float64(c.Dropped())},
		{Name: p + "pairs_bad_map_total", Help: "Pairs naming no configured map.", Value: float64(c.badMap.Load())},
	}
	if l := c.divlog; l != nil {
		out = append(out,
			metrics.Sample{Name: p + "divergence_logged_total", Help: "Divergence log lines written.", Value: float64(l.logged.Load())},
			metrics.Sample{Name: p + "divergence_suppressed_total", Help: "Divergences not logged: over the log's rate.", Value: float64(l.suppressed.Load())},
			metrics.Sample{Name: p + "divergence_log_errors_total", Help: "Divergence log writes or rotations that failed.", Value: float64(l.errs.Load())})
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range c.maps {
		out = append(out, metrics.Sample{Name: p + "requests_total", Help: "Requests compared.",
			Labels: []string{"map", m.name}, Value: float64(m.requests)})
		for s := range numSides {
			st := &m.sides[s]
			for cl, n := range st.classes {
				out = append(out, metrics.Sample{Name: p + "responses_total", Help: "Responses by class.",
					Labels: []string{"map", m.name, "side", s.String(), "class", cl}, Value: float64(n)})
			}
			h := &st.latency
			out = append(out, metrics.Sample{Name: p + "latency_seconds", Kind: metrics.Histogram,
				Help:   "From the request's last byte to the response's first.",
				Labels: []string{"map", m.name, "side", s.String()}, Value: h.sum, Count: h.count, Buckets: h.promBuckets()})
		}
		for k, n := range m.pairs {
			if k[0] == k[1] {
				continue
			}
			out = append(out, metrics.Sample{Name: p + "mismatches_total", Help: "Pairs whose prod and shadow classes differed.",
				Labels: []string{"map", m.name, "prod", k[0], "shadow", k[1]}, Value: float64(n)})
		}
	}
	return out
}

// Handlers returns the report's handlers by path, for metrics.ServeWith:
// /report.json (the snapshot) and /report (the page).
func (c *Comparer) Handlers() map[string]http.Handler {
	return map[string]http.Handler{
		"/report.json": http.HandlerFunc(c.serveJSON),
		"/report":      http.HandlerFunc(c.servePage),
	}
}

func (c *Comparer) serveJSON(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, "GET only", http.StatusMethodNotAllowed)
		return
	}
	if c == nil {
		http.Error(w, errNoComparer.Error(), http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", " ")
	_ = enc.Encode(c.Snapshot())
}
