package compare

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

// MaxReportBytes bounds what `tcpshadow report` reads from a daemon.
const MaxReportBytes = 8 << 20

// ReportPath is where a copy daemon serves the snapshot.
const ReportPath = "/report.json"

// ReportURL validates a --from value and completes it: the http scheme
// and ReportPath by default.
func ReportURL(from string) (string, error) {
	if from == "" {
		return "", errors.New("--from is required: the copy daemon's --metrics address, e.g. 198.18.0.1:9464")
	}
	s := from
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("--from %q: want HOST:PORT or http://HOST:PORT/PATH: %w", from, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("--from %q: want an http or https URL", from)
	}
	if u.Hostname() == "" {
		return "", fmt.Errorf("--from %q: want HOST:PORT or http://HOST:PORT/PATH: no host", from)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return "", fmt.Errorf("--from %q: port %q: want 1 to 65535", from, p)
		}
	}
	if u.Path == "" || u.Path == "/" || u.Path == "/metrics" || u.Path == "/report" {
		u.Path = ReportPath
	}
	return u.String(), nil
}

// FetchReport reads and parses the snapshot at u (a ReportURL) with c,
// reading at most MaxReportBytes. It returns the report and the bytes
// read.
func FetchReport(ctx context.Context, c *http.Client, u string) (Report, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return Report{}, nil, fmt.Errorf("--from: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return Report{}, nil, fmt.Errorf("fetch report %s: timed out: %w", u, err)
		}
		return Report{}, nil, fmt.Errorf("fetch report: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return Report{}, nil, fmt.Errorf("fetch report %s: 404: not a copy daemon with comparison on (an older tcpshadow, an intercept agent, or another server)", u)
	}
	if resp.StatusCode != http.StatusOK {
		return Report{}, nil, fmt.Errorf("fetch report %s: %s", u, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, MaxReportBytes+1))
	if err != nil {
		return Report{}, nil, fmt.Errorf("read report from %s: %w", u, err)
	}
	if len(b) > MaxReportBytes {
		return Report{}, nil, fmt.Errorf("read report from %s: more than %d bytes", u, MaxReportBytes)
	}
	r, err := ParseReport(b)
	if err != nil {
		return Report{}, nil, fmt.Errorf("report from %s: %w", u, err)
	}
	return r, b, nil
}

// ParseReport parses a snapshot, refusing what a copy daemon would not
// send: not JSON, another tool's, or maps without names.
func ParseReport(b []byte) (Report, error) {
	var r Report
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&r); err != nil {
		return Report{}, fmt.Errorf("not a tcpshadow report: bad JSON: %w", err)
	}
	if r.Tool != ReportTool {
		return Report{}, fmt.Errorf("not a tcpshadow report: tool %q, want %q", clip(r.Tool), ReportTool)
	}
	for i, m := range r.Maps {
		if m.Map == "" {
			return Report{}, fmt.Errorf("bad report: map %d has no name", i)
		}
	}
	return r, nil
}

// maxField bounds a remote string printed in the table.
const maxField = 80

// clip makes a string from a remote report safe to print: printable
// ASCII only, bounded.
func clip(s string) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < maxField; i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e {
			c = '?'
		}
		b.WriteByte(c)
	}
	return b.String()
}

// writeTop prints a table of request summaries under title, if any.
func writeTop(buf *bytes.Buffer, title string, top []Divergent) error {
	if len(top) == 0 {
		return nil
	}
	fmt.Fprintf(buf, "  %s:\n", title)
	tw := tabwriter.NewWriter(buf, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "    count\tprod → shadow\tprod ms\tshadow ms\trequest\n")
	for _, d := range top {
		fmt.Fprintf(tw, "    %d\t%s → %s\t%.3f\t%.3f\t%s\n", d.Count, clip(d.Prod), clip(d.Shadow), d.ProdMS, d.ShadowMS, clip(d.Request))
	}
	return tw.Flush()
}

// WriteText prints the report per map: requests, the classes side by
// side with counts and shares, the latency quantiles, the mismatch
// pairs, the top divergent requests, and those slower on the shadow.
func WriteText(w io.Writer, r Report) error {
	var buf bytes.Buffer
	if len(r.Maps) == 0 {
		buf.WriteString("no maps compared\n")
	}
	if r.Dropped > 0 {
		fmt.Fprintf(&buf, "pairs dropped (comparer queue full): %d\n", r.Dropped)
	}
	for i, m := range r.Maps {
		if i > 0 {
			buf.WriteByte('\n')
		}
		fmt.Fprintf(&buf, "map %s (%s): %d requests\n", clip(m.Map), clip(m.Protocol), m.Requests)
		classes := classUnion(m)
		w := len("latency ms")
		for _, cl := range classes {
			w = max(w, len(clip(cl)))
		}
		fmt.Fprintf(&buf, "  %-*s %9s %7s %9s %7s\n", w, "class", "prod", "share", "shadow", "share")
		for _, cl := range classes {
			p, s := m.Prod.Classes[cl], m.Shadow.Classes[cl]
			fmt.Fprintf(&buf, "  %-*s %9d %7s %9d %7s\n", w, clip(cl), p, share(p, m.Requests), s, share(s, m.Requests))
		}
		fmt.Fprintf(&buf, "  %-*s %9s %7s %9s\n", w, "latency ms", "prod", "", "shadow")
		for _, q := range []struct {
			name string
			p, s float64
		}{{"p50", m.Prod.LatencyMS.P50, m.Shadow.LatencyMS.P50}, {"p90", m.Prod.LatencyMS.P90, m.Shadow.LatencyMS.P90},
			{"p99", m.Prod.LatencyMS.P99, m.Shadow.LatencyMS.P99}} {
			fmt.Fprintf(&buf, "  %-*s %9.3f %7s %9.3f\n", w, q.name, q.p, "", q.s)
		}
		if len(m.Mismatches) == 0 {
			buf.WriteString("  mismatches: none\n")
		} else {
			buf.WriteString("  mismatches (prod → shadow):\n")
			mm := slices.Clone(m.Mismatches)
			slices.SortFunc(mm, func(a, b Mismatch) int { return cmp.Compare(b.Count, a.Count) })
			for _, x := range mm {
				fmt.Fprintf(&buf, "    %s → %s: %d (%s)\n", clip(x.Prod), clip(x.Shadow), x.Count, share(x.Count, m.Requests))
			}
		}
		if err := writeTop(&buf, "top divergent requests", m.TopDivergent); err != nil {
			return err
		}
		if m.Slower > 0 {
			fmt.Fprintf(&buf, "  slower on the shadow (by %v and twice prod's time at least): %d (%s)\n", SlowerMargin, m.Slower, share(m.Slower, m.Requests))
		}
		if err := writeTop(&buf, "top slower requests", m.TopSlower); err != nil {
			return err
		}
	}
	_, err := w.Write(buf.Bytes())
	return err
}
