package main

import (
	"bytes"
	"fmt"
	"html"
	"math"
	"sort"
	"strconv"
)

// A small SVG line plot for the bench's report: panels stacked, one
// shared logarithmic x axis (offered rate), linear y axes from 0. It
// writes nothing but SVG 1.1 elements, escapes every text, and drops
// points that are not finite, so the file is well-formed whatever the
// run measured.

type plotPoint struct{ x, y float64 }

type plotLine struct {
	name  string
	color string
	dash  bool // dashed: the second tool
	pts   []plotPoint
}

type plotPanel struct {
	title, ylabel string
	lines         []plotLine
}

const (
	plotW       = 760
	plotPanelH  = 260
	plotLeft    = 70
	plotRight   = 200 // the legend
	plotTop     = 40
	plotBottom  = 50
	plotPanelGp = 40
)

// renderPlot returns the SVG document of panels over xlabel.
func renderPlot(title, xlabel string, panels []plotPanel) []byte {
	xmin, xmax := math.Inf(1), math.Inf(-1)
	for i := range panels {
		for j := range panels[i].lines {
			l := &panels[i].lines[j]
			l.pts = finitePoints(l.pts)
			for _, p := range l.pts {
				xmin, xmax = min(xmin, p.x), max(xmax, p.x)
			}
		}
	}
	if math.IsInf(xmin, 1) {
		xmin, xmax = 100, 100000
	}
	// Whole decades around the data.
	lo, hi := math.Floor(math.Log10(xmin)), math.Ceil(math.Log10(xmax))
	if hi <= lo {
		hi = lo + 1
	}
	innerW := float64(plotW - plotLeft - plotRight)
	xpos := func(x float64) float64 {
		return plotLeft + (math.Log10(x)-lo)/(hi-lo)*innerW
	}
	h := plotTop + len(panels)*(plotPanelH+plotPanelGp) + plotBottom - plotPanelGp
	var b bytes.Buffer
	fmt.Fprintf(&b, `<?xml version="1.0" encoding="UTF-8"?>`+"\n")
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", plotW, h, plotW, h)
	fmt.Fprintf(&b, `<rect x="0" y="0" width="%d" height="%d" fill="white"/>`+"\n", plotW, h)
	fmt.Fprintf(&b, `<text x="%d" y="20" font-size="15" font-weight="bold">%s</text>`+"\n", plotLeft, esc(title))
	for i, p := range panels {
		top := float64(plotTop + i*(plotPanelH+plotPanelGp))
		bottom := top + plotPanelH
		ymax := 0.0
		for _, l := range p.lines {
			for _, pt := range l.pts {
				ymax = max(ymax, pt.y)
			}
		}
		step := niceStep(ymax)
		ytop := math.Max(step, math.Ceil(ymax/step)*step)
		ypos := func(y float64) float64 { return bottom - y/ytop*plotPanelH }
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" font-weight="bold">%s</text>`+"\n", plotLeft, top-6, esc(p.title))
		// Grid and y ticks.
		for y := 0.0; y <= ytop+step/2; y += step {
			fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", plotLeft, ypos(y), plotLeft+innerW, ypos(y))
			fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", plotLeft-6, ypos(y)+4, esc(fmtTick(y)))
		}
		// x ticks at 1, 2, 5 of each decade.
		for d := lo; d <= hi; d++ {
			for _, m := range []float64{1, 2, 5} {
				x := m * math.Pow(10, d)
				if math.Log10(x) > hi+1e-9 {
					break
				}
				px := xpos(x)
				fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#eee"/>`+"\n", px, top, px, bottom)
				fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", px, bottom+16, esc(fmtRate(x)))
			}
		}
		fmt.Fprintf(&b, `<rect x="%d" y="%.1f" width="%.1f" height="%d" fill="none" stroke="#333"/>`+"\n", plotLeft, top, innerW, plotPanelH)
		fmt.Fprintf(&b, `<text transform="translate(16 %.1f) rotate(-90)" text-anchor="middle">%s</text>`+"\n", top+plotPanelH/2, esc(p.ylabel))
		for j, l := range p.lines {
			dash := ""
			if l.dash {
				dash = ` stroke-dasharray="6 4"`
			}
			var pts bytes.Buffer
			for k, pt := range l.pts {
				if k > 0 {
					pts.WriteByte(' ')
				}
				fmt.Fprintf(&pts, "%.1f,%.1f", xpos(pt.x), ypos(pt.y))
			}
			fmt.Fprintf(&b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2"%s/>`+"\n", pts.String(), esc(l.color), dash)
			for _, pt := range l.pts {
				fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`+"\n", xpos(pt.x), ypos(pt.y), esc(l.color))
			}
			ly := top + 14 + float64(j)*18
			lx := plotLeft + innerW + 14
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"%s/>`+"\n", lx, ly-4, lx+24, ly-4, esc(l.color), dash)
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f">%s</text>`+"\n", lx+30, ly, esc(l.name))
		}
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", plotLeft+innerW/2, h-12, esc(xlabel))
	b.WriteString("</svg>\n")
	return b.Bytes()
}

// finitePoints keeps the points with finite coordinates and x > 0 (the
// axis is logarithmic), sorted by x.
func finitePoints(pts []plotPoint) []plotPoint {
	var out []plotPoint
	for _, p := range pts {
		if p.x > 0 && !math.IsInf(p.x, 0) && !math.IsNaN(p.y) && !math.IsInf(p.y, 0) {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].x < out[j].x })
	return out
}

// niceStep is a 1, 2 or 5 times a power of ten giving about 5 ticks up
// to ymax.
func niceStep(ymax float64) float64 {
	if ymax <= 0 {
		return 1
	}
	raw := ymax / 5
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= raw {
			return m * p
		}
	}
	return 10 * p
}

func fmtTick(y float64) string { return strconv.FormatFloat(y, 'g', 4, 64) }

func fmtRate(x float64) string {
	if x >= 1000 {
		return strconv.FormatFloat(x/1000, 'g', 4, 64) + "k"
	}
	return strconv.FormatFloat(x, 'g', 4, 64)
}

func esc(s string) string { return html.EscapeString(s) }
