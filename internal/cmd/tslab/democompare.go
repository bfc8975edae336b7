package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/compare"
	"github.com/tcpshadow/tcpshadow/internal/lab"
)

// The demo's comparison: the shadow's nginx fails /cmp/fail/ with 500 and
// answers /cmp/slow/ through a backend that waits slowDelay, while prod
// answers both at once (shadowOnlyConf). The copy daemon's report must
// name both; the demo prints it.

const (
	slowBackend = "127.0.0.1:8085" // in the shadow namespace, behind its nginx
	slowDelay   = 40 * time.Millisecond
	cmpKey      = "cmp"
	reportWait  = 10 * time.Second // the report comparing every request prod served
)

// cmpPath is request i of connection c of the comparison's traffic: one
// in five fails on the shadow, one in five is slow there.
func cmpPath(c, i int) string {
	what := "ok"
	switch i % 5 {
	case 2:
		what = "fail"
	case 4:
		what = "slow"
	}
	return fmt.Sprintf("/%s/%s/%d/%d", cmpKey, what, c, i)
}

// startSlowBackend serves the shadow's /cmp/slow/ late, until stop.
func startSlowBackend(ns *lab.NS) (stop func(), err error) {
	ln, err := ns.Listen("tcp", slowBackend)
	if err != nil {
		return nil, fmt.Errorf("slow backend: %w", err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t := time.NewTimer(slowDelay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "hello from the shadow, late\n")
	})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Println("slow backend:", err)
		}
	}()
	return func() { srv.Close(); <-done }, nil
}

// comparison is what the copy daemon's report said about the demo's
// comparison traffic, against what prod served.
type comparison struct {
	text               string // the report as `tcpshadow report` prints it
	err                error  // fetching it
	prodFail, prodSlow int    // prod's /cmp/fail/ and /cmp/slow/ requests
	failed             uint64 // the report's 200 → 500
	shadow500          uint64 // the shadow's answers the report classed 500
	slower             uint64 // the report's requests slower on the shadow
	slowNamed          bool   // a /cmp/slow/ request among the top slower
	failNamed          bool   // a /cmp/fail/ request among the top divergent
}

// fetchComparison reads the copy daemon's report (from prod, over
// loopback) for the IPv4 HTTP map, and prod's access log.
func fetchComparison(ctx context.Context, st *stage) *comparison {
	c := &comparison{}
	entries, err := st.prod.requests()
	if err != nil {
		c.err = err
		return c
	}
	v4 := 0 // prod's requests on the IPv4 map: the report's, once it has them all
	for _, e := range entries {
		if e.remote.Is4() {
			v4++
		}
		switch {
		case strings.HasPrefix(e.path, "/"+cmpKey+"/fail/"):
			c.prodFail++
		case strings.HasPrefix(e.path, "/"+cmpKey+"/slow/"):
			c.prodSlow++
		}
	}
	hc := st.lab.Prod.HTTPClient(1)
	defer hc.CloseIdleConnections()
	hc.Timeout = 5 * time.Second
	want := net.JoinHostPort(lab.ProdClientSideV4.String(), "80")
	var r compare.Report
	// A session's last request is compared when the session ends, which
	// may be after the shadow's log caught up: wait for it, bounded.
	perr := poll(ctx, reportWait, func() (bool, error) {
		var err error
		if r, _, err = compare.FetchReport(ctx, hc, "http://"+st.copyMetricsAddr()+"/report.json"); err != nil {
			return false, err
		}
		for _, m := range r.Maps {
			if strings.HasPrefix(m.Map, want+"-") {
				return m.Requests >= uint64(v4), nil
			}
		}
		return false, nil
	})
	if perr != nil && !errors.Is(perr, errTimedOut) {
		c.err = perr
		return c
	}
	var shown []compare.MapReport
	for _, m := range r.Maps {
		if m.Requests > 0 {
			shown = append(shown, m)
		}
		if !strings.HasPrefix(m.Map, want+"-") {
			continue
		}
		for _, x := range m.Mismatches {
			if x.Prod == "200" && x.Shadow == "500" {
				c.failed += x.Count
			}
		}
		c.slower = m.Slower
		c.shadow500 = m.Shadow.Classes["500"]
		for _, d := range m.TopDivergent {
			c.failNamed = c.failNamed || strings.Contains(d.Request, "/"+cmpKey+"/fail/")
		}
		for _, d := range m.TopSlower {
			c.slowNamed = c.slowNamed || strings.Contains(d.Request, "/"+cmpKey+"/slow/")
		}
	}
	r.Maps = shown
	var b strings.Builder
	if err := compare.WriteText(&b, r); err != nil {
		c.err = err
	}
	c.text = b.String()
	return c
}

// reportComparison prints the copy daemon's report and what it found.
func reportComparison(out io.Writer, st *stage, c *comparison) {
	fmt.Fprintln(out)
	if c.err != nil {
		fmt.Fprintf(out, "comparison: %v\n", c.err)
		return
	}
	fmt.Fprintf(out, "the copy daemon's comparison (tcpshadow report --from http://%s, in %s):\n", st.copyMetricsAddr(), st.lab.Prod.Name())
	for _, l := range strings.Split(strings.TrimRight(c.text, "\n"), "\n") {
		fmt.Fprintf(out, "  %s\n", l)
	}
	fmt.Fprintf(out, "the shadow fails /%s/fail/ (prod served it %d times): the report counts %d shadow answers 500, %d paired as 200 → 500%s\n",
		cmpKey, c.prodFail, c.shadow500, c.failed, named(c.failNamed))
	fmt.Fprintf(out, "the shadow answers /%s/slow/ %v late (prod served it %d times): the report counts %d slower%s\n",
		cmpKey, slowDelay, c.prodSlow, c.slower, named(c.slowNamed))
}

func named(ok bool) string {
	if ok {
		return ", and names them"
	}
	return ", and does NOT name them"
}
