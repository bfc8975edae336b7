package compare

import (
	"fmt"
	"html/template"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// pageRefreshSeconds is how often the page reloads itself (a meta
// refresh: the page has no script).
const pageRefreshSeconds = 5

// The latency chart's geometry, in SVG user units.
const (
	chartW, chartH       = 640, 200
	chartLeft, chartBase = 40, 170
	chartTop             = 10
)

var pageTemplate = template.Must(template.New("report").Funcs(template.FuncMap{
	"share": share,
	"ms":    func(v float64) string { return strconv.FormatFloat(v, 'f', 3, 64) },
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{{.Refresh}}">
<title>tcpshadow: prod and shadow compared</title>
<style>
body{font:14px sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
th{background:#f3f3f3}
td.name,th.name{text-align:left}
.prod{color:#1f5fbf}.shadow{color:#d9700a}
td.mismatch{background:#fde2e2}
svg text{font:11px sans-serif;fill:#444}
svg text.prod{fill:#1f5fbf}svg text.shadow{fill:#d9700a}
</style></head><body>
<h1>prod and shadow compared</h1>
<p id="generated">{{.Report.Generated.Format "2006-01-02 15:04:05 UTC"}}; pairs dropped: <span id="dropped">{{.Report.Dropped}}</span></p>
{{range $i, $m := .Maps}}
<section class="map" id="map-{{$i}}" data-map="{{$m.Map}}">
<h2>map {{$m.Map}} <small>({{$m.Protocol}})</small></h2>
<p>requests: <span class="requests" data-map="{{$m.Map}}">{{$m.Requests}}</span></p>
<h3>latency</h3>
<svg width="{{$.W}}" height="{{$.H}}" viewBox="0 0 {{$.W}} {{$.H}}" role="img" aria-label="latency distributions of prod and shadow">
<line x1="{{$.Left}}" y1="{{$.Base}}" x2="{{$.W}}" y2="{{$.Base}}" stroke="#888"/>
{{range $m.Ticks}}<line x1="{{.X}}" y1="{{$.Base}}" x2="{{.X}}" y2="{{$.TickEnd}}" stroke="#888"/><text x="{{.X}}" y="{{$.TickText}}" text-anchor="middle">{{.Label}}</text>
{{end}}<polygon class="dist-prod" points="{{$m.ProdPoints}}" fill="#1f5fbf" fill-opacity="0.35" stroke="#1f5fbf"/>
<polygon class="dist-shadow" points="{{$m.ShadowPoints}}" fill="#d9700a" fill-opacity="0.35" stroke="#d9700a"/>
<text x="{{$.Left}}" y="{{$.Top}}" dy="8" class="prod">■ prod</text><text x="{{$.Left}}" y="{{$.Top}}" dx="60" dy="8" class="shadow">■ shadow</text>
</svg>
<table class="latency" data-map="{{$m.Map}}">
<tr><th class="name">ms</th><th>p50</th><th>p90</th><th>p99</th><th>max</th><th>answered</th></tr>
<tr data-side="prod"><td class="name prod">prod</td><td class="p50">{{ms $m.Prod.LatencyMS.P50}}</td><td class="p90">{{ms $m.Prod.LatencyMS.P90}}</td><td class="p99">{{ms $m.Prod.LatencyMS.P99}}</td><td>{{ms $m.Prod.LatencyMS.Max}}</td><td>{{$m.Prod.Answered}}</td></tr>
<tr data-side="shadow"><td class="name shadow">shadow</td><td class="p50">{{ms $m.Shadow.LatencyMS.P50}}</td><td class="p90">{{ms $m.Shadow.LatencyMS.P90}}</td><td class="p99">{{ms $m.Shadow.LatencyMS.P99}}</td><td>{{ms $m.Shadow.LatencyMS.Max}}</td><td>{{$m.Shadow.Answered}}</td></tr>
</table>
<h3>classes</h3>
<table class="classes" data-map="{{$m.Map}}">
<tr><th class="name">class</th><th class="prod">prod</th><th class="prod">share</th><th class="shadow">shadow</th><th class="shadow">share</th></tr>
{{range $m.Classes}}<tr data-class="{{.}}"><td class="name">{{.}}</td><td class="prod-count">{{index $m.Prod.Classes .}}</td><td>{{share (index $m.Prod.Classes .) $m.Requests}}</td><td class="shadow-count">{{index $m.Shadow.Classes .}}</td><td>{{share (index $m.Shadow.Classes .) $m.Requests}}</td></tr>
{{end}}</table>
<h3>prod class (rows) by shadow class (columns)</h3>
<table class="matrix" data-map="{{$m.Map}}">
<tr><th class="name">prod \ shadow</th>{{range $m.Classes}}<th>{{.}}</th>{{end}}</tr>
{{range $m.Matrix}}<tr><th class="name">{{.Prod}}</th>{{range .Cells}}<td{{if .Mismatch}} class="mismatch"{{end}} data-prod="{{.Prod}}" data-shadow="{{.Shadow}}">{{if .Count}}{{.Count}}{{end}}</td>{{end}}</tr>
{{end}}</table>
{{if $m.TopDivergent}}<h3>top divergent requests</h3>
<table class="divergent" data-map="{{$m.Map}}">
<tr><th class="name">request</th><th>count</th><th class="prod">prod</th><th class="shadow">shadow</th><th class="prod">prod ms</th><th class="shadow">shadow ms</th></tr>
{{range $m.TopDivergent}}<tr><td class="name request">{{.Request}}</td><td class="count">{{.Count}}</td><td>{{.Prod}}</td><td>{{.Shadow}}</td><td>{{ms .ProdMS}}</td><td>{{ms .ShadowMS}}</td></tr>
{{end}}</table>{{end}}
{{if $m.TopSlower}}<h3>top slower requests ({{$m.Slower}} slower on the shadow)</h3>
<table class="slower" data-map="{{$m.Map}}">
<tr><th class="name">request</th><th>count</th><th class="prod">prod</th><th class="shadow">shadow</th><th class="prod">prod ms</th><th class="shadow">shadow ms</th></tr>
{{range $m.TopSlower}}<tr><td class="name request">{{.Request}}</td><td class="count">{{.Count}}</td><td>{{.Prod}}</td><td>{{.Shadow}}</td><td>{{ms .ProdMS}}</td><td>{{ms .ShadowMS}}</td></tr>
{{end}}</table>{{end}}
</section>
{{end}}
</body></html>
`))

type pageData struct {
	Report                                   Report
	Maps                                     []pageMap
	Refresh                                  int
	W, H, Left, Base, Top, TickEnd, TickText int
}

type pageMap struct {
	MapReport
	Classes                  []string // the union of both sides' classes, by prod count
	Matrix                   []matrixRow
	ProdPoints, ShadowPoints string
	Ticks                    []tick
}

type matrixRow struct {
	Prod  string
	Cells []matrixCell
}

type matrixCell struct {
	Prod, Shadow string
	Count        uint64
	Mismatch     bool
}

type tick struct {
	X     float64
	Label string
}

func share(n, total uint64) string {
	if total == 0 {
		return "-"
	}
	return strconv.FormatFloat(100*float64(n)/float64(total), 'f', 1, 64) + "%"
}

func (c *Comparer) servePage(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, "GET only", http.StatusMethodNotAllowed)
		return
	}
	if c == nil {
		http.Error(w, errNoComparer.Error(), http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	if err := pageTemplate.Execute(w, newPageData(c.Snapshot())); err != nil {
		c.log.Debug("report page", "err", err)
	}
}

func newPageData(r Report) pageData {
	d := pageData{Report: r, Refresh: pageRefreshSeconds, W: chartW, H: chartH, Left: chartLeft, Base: chartBase,
		Top: chartTop, TickEnd: chartBase + 5, TickText: chartBase + 18}
	for _, m := range r.Maps {
		pm := pageMap{MapReport: m, Classes: classUnion(m)}
		for _, pc := range pm.Classes {
			row := matrixRow{Prod: pc}
			for _, sc := range pm.Classes {
				cell := matrixCell{Prod: pc, Shadow: sc}
				if pc == sc {
					cell.Count = m.Matched[pc]
				} else {
					for _, mm := range m.Mismatches {
						if mm.Prod == pc && mm.Shadow == sc {
							cell.Count, cell.Mismatch = mm.Count, true
						}
					}
				}
				row.Cells = append(row.Cells, cell)
			}
			pm.Matrix = append(pm.Matrix, row)
		}
		peak := max(peakShare(m.Prod), peakShare(m.Shadow))
		pm.ProdPoints, pm.ShadowPoints = distPoints(m.Prod, peak), distPoints(m.Shadow, peak)
		for _, msv := range []float64{0.01, 0.1, 1, 10, 100, 1000, 10000, 100000} {
			pm.Ticks = append(pm.Ticks, tick{X: chartX(bucketIndex(msv / 1e3)), Label: tickLabel(msv)})
		}
		d.Maps = append(d.Maps, pm)
	}
	return d
}

func tickLabel(ms float64) string {
	if ms >= 1000 {
		return strconv.FormatFloat(ms/1000, 'g', -1, 64) + "s"
	}
	return strconv.FormatFloat(ms, 'g', -1, 64) + "ms"
}

// classUnion returns both sides' classes, most frequent on prod first.
func classUnion(m MapReport) []string {
	set := map[string]uint64{}
	for k, v := range m.Prod.Classes {
		set[k] += v * 2
	}
	for k, v := range m.Shadow.Classes {
		set[k] += v
	}
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b string) int {
		if set[a] != set[b] {
			if set[a] > set[b] {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	})
	return out
}

// bucketIndex returns the histogram bucket a latency in seconds falls in.
func bucketIndex(s float64) int {
	i, _ := slices.BinarySearch(latencyBounds, s)
	return i
}

// chartX places bucket i (of numLatencyBuckets, log-spaced) on the x axis.
func chartX(i int) float64 {
	return chartLeft + float64(i)*float64(chartW-chartLeft)/float64(numLatencyBuckets)
}

func peakShare(s SideReport) float64 {
	var peak float64
	for _, b := range s.Histogram {
		if s.Answered > 0 {
			peak = max(peak, float64(b.Count)/float64(s.Answered))
		}
	}
	return peak
}

// distPoints draws a side's latency distribution as a closed outline:
// each bucket a step as high as its share of the side's answers, scaled
// so the taller of the two sides reaches the top.
func distPoints(s SideReport, peak float64) string {
	counts := make([]uint64, numLatencyBuckets)
	for _, b := range s.Histogram {
		i := numLatencyBuckets - 1
		if b.LeMS > 0 {
			i = bucketIndex(b.LeMS / 1e3 * (1 - 1e-9))
		}
		counts[i] = b.Count
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "%.1f,%d", chartX(0), chartBase)
	for i, n := range counts {
		y := float64(chartBase)
		if peak > 0 && s.Answered > 0 {
			y -= float64(chartBase-chartTop-12) * (float64(n) / float64(s.Answered)) / peak
		}
		y = math.Round(y*10) / 10
		fmt.Fprintf(&sb, " %.1f,%.1f %.1f,%.1f", chartX(i), y, chartX(i+1), y)
	}
	fmt.Fprintf(&sb, " %.1f,%d", chartX(numLatencyBuckets), chartBase)
	return sb.String()
}
