package main

import (
	"bytes"
	"encoding/xml"
	"io"
	"math"
	"strings"
	"testing"
	"time"
)

// wellFormed decodes every token of doc and counts the elements by name.
func wellFormed(t *testing.T, doc []byte) map[string]int {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(doc))
	n := map[string]int{}
	depth := 0
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed: %v\n%s", err, doc)
		}
		switch e := tok.(type) {
		case xml.StartElement:
			if depth == 0 && (e.Name.Local != "svg" || e.Name.Space != "http://www.w3.org/2000/svg") {
				t.Fatalf("root element %v, want svg in the SVG namespace", e.Name)
			}
			depth++
			n[e.Name.Local]++
		case xml.EndElement:
			depth--
		}
	}
	if depth != 0 || n["svg"] != 1 {
		t.Fatalf("depth %d, %d svg elements", depth, n["svg"])
	}
	return n
}

func TestRenderPlot(t *testing.T) {
	panels := []plotPanel{
		{title: "CPU <per> request & more", ylabel: "µs", lines: []plotLine{
			{name: "tcpshadow \"ka\"", color: "#1f77b4", pts: []plotPoint{{10000, 30}, {1000, 150}, {42000, 21}}},
			{name: "tcpcopy ka", color: "#1f77b4", dash: true, pts: []plotPoint{{1000, 80}, {10000, math.NaN()}, {0, 5}, {math.Inf(1), 3}}},
		}},
		{title: "Copy ratio", ylabel: "%", lines: []plotLine{{name: "x", color: "red", pts: []plotPoint{{1000, 100}}}}},
		{title: "empty", ylabel: "none"},
	}
	svg := renderPlot("title & <stuff>", "rate", panels)
	n := wellFormed(t, svg)
	if n["polyline"] != 3 || n["circle"] != 3+1+1 {
		t.Errorf("%d polylines, %d circles; want 3 and 5 (the non-finite and x ≤ 0 points dropped)", n["polyline"], n["circle"])
	}
	if s := string(svg); strings.Contains(s, "NaN") || strings.Contains(s, "Inf") {
		t.Errorf("plot holds a non-finite number:\n%s", s)
	}
	// Nothing at all still gives a valid document.
	wellFormed(t, renderPlot("", "", nil))
}

func TestPlotPanels(t *testing.T) {
	step := func(rate float64, us time.Duration, copied, prod int) *stepResult {
		return &stepResult{copierCPU: us * time.Duration(copied), shadow: copied, prod: prod,
			load: &loadResult{ok: int(rate * 10), elapsed: 10 * time.Second}}
	}
	r := &benchResult{series: []seriesResult{{series: series{shape: keepAlive, addrs: 1, rates: []int{1000, 0}},
		copied: []*stepResult{step(1000, 100*time.Microsecond, 1000, 1000), step(30000, 20*time.Microsecond, 99, 100)}}}}
	p := plotPanels(r)
	if len(p) != 2 || len(p[0].lines) != 1 {
		t.Fatalf("panels %+v", p)
	}
	cpu, cp := p[0].lines[0].pts, p[1].lines[0].pts
	if len(cpu) != 2 || cpu[0] != (plotPoint{1000, 100}) || cpu[1] != (plotPoint{30000, 20}) {
		t.Errorf("cpu points %v; want (1000, 100), (30000 answered at max, 20)", cpu)
	}
	if cp[1].y != 99 {
		t.Errorf("copy ratio %v; want 99%%", cp[1].y)
	}
	wellFormed(t, renderPlot("t", "x", p))
	if plotPanels(&benchResult{}) != nil {
		t.Error("a run without copied steps has a plot")
	}
}
