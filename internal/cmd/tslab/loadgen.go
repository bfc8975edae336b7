package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

const (
	connTimeout   = 5 * time.Second // dial, and each request on a connection
	paceEvery     = time.Millisecond
	maxBacklog    = 10_000  // paced requests waiting for a free connection
	maxPerSecond  = 200_000 // hard bound on requests per second of a step
	errorBackoff  = time.Millisecond
	latencyPerCap = 1 << 20 // latencies kept per worker
)

// shape is a traffic shape of the benchmark.
type shape int

const (
	keepAlive  shape = iota // requests over long-lived connections
	connPerReq              // a new connection per request, closed by the server
)

func (s shape) String() string {
	if s == keepAlive {
		return "keep-alive"
	}
	return "one connection per request"
}

// loadSpec is one step of load: open-loop at rate (requests, or
// connections, per second), or as fast as the connections go when rate
// is 0.
type loadSpec struct {
	shape  shape
	rate   int
	conns  int          // keep-alive connections, or connections in flight at most
	locals []netip.Addr // local addresses, spread round robin; empty: the kernel's choice
	target netip.AddrPort
	prefix string // request paths are prefix + "/" + n; the access logs are split by it
	dur    time.Duration
	want   []byte // expected response body
}

// loadResult is what the client saw during a step.
type loadResult struct {
	sent, ok, errs int
	missed         int // paced requests dropped: every connection busy and the backlog full
	elapsed        time.Duration
	lat            []time.Duration // of answered requests, sorted
	firstErr       string
}

// rate returns answered requests per second.
func (r *loadResult) rate() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.ok) / r.elapsed.Seconds()
}

// quantile returns the q-quantile of the latencies (0 without any).
func (r *loadResult) quantile(q float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	return r.lat[min(len(r.lat)-1, int(q*float64(len(r.lat))))]
}

// workerStats is one worker's share of a loadResult.
type workerStats struct {
	sent, ok, errs int
	lat            []time.Duration
	firstErr       error
}

// runLoad drives one step from the dialer's namespace and returns once
// every worker is done: bounded by spec.dur plus one request timeout, and
// by maxPerSecond requests a second.
func runLoad(ctx context.Context, d *lab.Dialer, spec loadSpec) *loadResult {
	start := time.Now()
	deadline := start.Add(spec.dur)
	ctx, cancel := context.WithDeadline(ctx, deadline.Add(connTimeout))
	defer cancel()
	limit := int64(maxPerSecond * spec.dur.Seconds())
	var issued atomic.Int64 // requests begun, against limit
	var next atomic.Int64   // path numbers and local-address rotation

	var tokens chan struct{}
	var missed int
	var pacer sync.WaitGroup
	if spec.rate > 0 {
		tokens = make(chan struct{}, min(maxBacklog, max(spec.conns, spec.rate/10)))
		pacer.Go(func() { missed = pace(ctx, tokens, spec.rate, start, deadline) })
	}
	// take returns false when the worker should stop.
	take := func() bool {
		if !time.Now().Before(deadline) {
			return false // paced requests still queued count as not offered
		}
		if tokens != nil {
			select {
			case _, ok := <-tokens:
				if !ok {
					return false
				}
			case <-ctx.Done():
				return false
			}
		} else if ctx.Err() != nil {
			return false
		}
		return issued.Add(1) <= limit
	}

	stats := make([]workerStats, spec.conns)
	var wg sync.WaitGroup
	for w := range spec.conns {
		wg.Go(func() {
			st := &stats[w]
			st.lat = make([]time.Duration, 0, min(latencyPerCap, max(1024, 2*spec.rate*int(spec.dur.Seconds()+1)/spec.conns)))
			g := &loadWorker{d: d, spec: &spec, next: &next, st: st}
			defer g.closeConn()
			for take() {
				g.request(ctx)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	cancel()
	pacer.Wait()
	if tokens != nil {
		for range tokens {
			missed++
		}
	}

	res := &loadResult{missed: missed, elapsed: min(elapsed, spec.dur)}
	for i := range stats {
		st := &stats[i]
		res.sent += st.sent
		res.ok += st.ok
		res.errs += st.errs
		res.lat = append(res.lat, st.lat...)
		if st.firstErr != nil && res.firstErr == "" {
			res.firstErr = st.firstErr.Error()
		}
	}
	slices.Sort(res.lat)
	return res
}

// pace puts rate tokens a second into tokens, in paceEvery ticks, until
// deadline, then closes it. Tokens that do not fit are counted, not
// queued: open loop, the backlog bounded.
func pace(ctx context.Context, tokens chan<- struct{}, rate int, start, deadline time.Time) (missed int) {
	defer close(tokens)
	t := time.NewTicker(paceEvery)
	defer t.Stop()
	var issued int64
	for {
		now := time.Now()
		if !now.Before(deadline) {
			now = deadline
		}
		due := int64(float64(rate)*now.Sub(start).Seconds()) - issued
		for ; due > 0; due-- {
			issued++
			select {
			case tokens <- struct{}{}:
			default:
				missed++
			}
		}
		if now.Equal(deadline) {
			return missed
		}
		select {
		case <-ctx.Done():
			return missed
		case <-t.C:
		}
	}
}

// loadWorker is one connection slot: a kept-alive connection, or one new
// connection per request.
type loadWorker struct {
	d    *lab.Dialer
	spec *loadSpec
	next *atomic.Int64
	st   *workerStats

	conn net.Conn
	br   *bufio.Reader
	wbuf []byte
	body []byte
}

func (g *loadWorker) fail(err error) {
	g.st.errs++
	if g.st.firstErr == nil {
		g.st.firstErr = err
	}
	g.closeConn()
	if g.spec.rate == 0 {
		time.Sleep(errorBackoff) // as fast as possible must not spin on a refusal
	}
}

func (g *loadWorker) closeConn() {
	if g.conn != nil {
		g.conn.Close()
		g.conn = nil
	}
}

// request sends one GET and reads the answer, dialling first when there is
// no connection. The latency runs from before the dial (one connection per
// request) or the write (keep-alive) to the end of the body.
func (g *loadWorker) request(ctx context.Context) {
	n := g.next.Add(1)
	g.st.sent++
	t0 := time.Now()
	if g.conn == nil {
		var local netip.Addr
		if len(g.spec.locals) > 0 {
			local = g.spec.locals[int(n)%len(g.spec.locals)]
		}
		dctx, cancel := context.WithTimeout(ctx, connTimeout)
		c, err := g.d.DialTCP(dctx, local, g.spec.target)
		cancel()
		if err != nil {
			g.fail(err)
			return
		}
		g.conn = c
		if g.br == nil {
			g.br = bufio.NewReaderSize(c, 4096)
		} else {
			g.br.Reset(c)
		}
	}
	if g.spec.shape == keepAlive {
		t0 = time.Now() // a reconnect is not the request's
	}
	closeAfter := g.spec.shape == connPerReq
	keep, err := g.roundTrip(n, closeAfter)
	if err != nil {
		g.fail(err)
		return
	}
	if closeAfter {
		// Read the server's FIN before closing, so the server closes
		// first and the TIME_WAIT is on its side, not on the client's
		// ports.
		var b [1]byte
		if _, err := g.br.Read(b[:]); !errors.Is(err, io.EOF) {
			g.fail(fmt.Errorf("after the response: %v, want EOF", err))
			return
		}
	}
	g.st.ok++
	if len(g.st.lat) < latencyPerCap {
		g.st.lat = append(g.st.lat, time.Since(t0))
	}
	if !keep || closeAfter {
		g.closeConn()
	}
}

// roundTrip writes GET prefix/n and reads a 200 answer whose body is the
// expected one. keep is false when the server will close the connection.
func (g *loadWorker) roundTrip(n int64, closeAfter bool) (keep bool, err error) {
	if err := g.conn.SetDeadline(time.Now().Add(connTimeout)); err != nil {
		return false, err
	}
	b := g.wbuf[:0]
	b = append(b, "GET "...)
	b = append(b, g.spec.prefix...)
	b = append(b, '/')
	b = strconv.AppendInt(b, n, 10)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = g.spec.target.Addr().AppendTo(b)
	if closeAfter {
		b = append(b, "\r\nConnection: close"...)
	}
	b = append(b, "\r\n\r\n"...)
	g.wbuf = b
	if _, err := g.conn.Write(b); err != nil {
		return false, err
	}
	return g.readResponse()
}

// readResponse reads one HTTP/1.1 response with a Content-Length body.
func (g *loadWorker) readResponse() (keep bool, err error) {
	line, err := g.br.ReadSlice('\n')
	if err != nil {
		return false, fmt.Errorf("status line: %w", err)
	}
	if !bytes.HasPrefix(line, []byte("HTTP/1.1 200 ")) {
		return false, fmt.Errorf("status line %q, want 200", bytes.TrimSpace(line))
	}
	length, keep := -1, true
	for {
		line, err := g.br.ReadSlice('\n')
		if err != nil {
			return false, fmt.Errorf("header: %w", err)
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			length, err = strconv.Atoi(string(value))
			if err != nil || length < 0 || length > 1<<16 {
				return false, fmt.Errorf("content-length %q", value)
			}
		case bytes.EqualFold(name, []byte("Connection")) && bytes.EqualFold(value, []byte("close")):
			keep = false
		}
	}
	if length < 0 {
		return false, errors.New("response without content-length")
	}
	if cap(g.body) < length {
		g.body = make([]byte, length)
	}
	body := g.body[:length]
	if _, err := io.ReadFull(g.br, body); err != nil {
		return false, fmt.Errorf("body: %w", err)
	}
	if !bytes.Equal(body, g.spec.want) {
		return false, fmt.Errorf("body %q, want %q", body, g.spec.want)
	}
	return keep, nil
}
