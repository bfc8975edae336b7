package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"sync"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

// trafficKind is one kind of load; its requests' paths start with
// "/"+key+"/", which is how the access logs are split by kind.
type trafficKind struct {
	key, title string
	requests   int
	run        func(ctx context.Context, d *driver)
}

// kinds returns the demo's loads at scale: at 1, 200 keep-alive GETs over
// 10 connections, 100 GETs one connection each, 20 POSTs of 1 KiB to
// 256 KiB, 100 keep-alive GETs over IPv6, and 200 keep-alive GETs of
// which the shadow fails one in five and answers one in five late.
func kinds(s *stage, scale float64) []trafficKind {
	n := func(base int) int { return max(1, int(math.Ceil(float64(base)*scale))) }
	const conns = 10
	ka4, short, posts, ka6, cmp := n(20), n(100), n(20), n(10), max(5, n(20))
	return []trafficKind{
		{"ka4", fmt.Sprintf("keep-alive GETs, IPv4, %d connections", conns), conns * ka4,
			func(ctx context.Context, d *driver) { d.keepAlive(ctx, "ka4", s.prodV4, conns, ka4) }},
		{"short", "GETs, IPv4, one connection each", short,
			func(ctx context.Context, d *driver) { d.short(ctx, "short", s.prodV4, short, conns) }},
		{"upload", "POSTs of 1 KiB to 256 KiB, IPv4", posts,
			func(ctx context.Context, d *driver) { d.posts(ctx, "upload", s.prodV4, posts, 4) }},
		{"ka6", fmt.Sprintf("keep-alive GETs, IPv6, %d connections", conns), conns * ka6,
			func(ctx context.Context, d *driver) { d.keepAlive(ctx, "ka6", s.prodV6, conns, ka6) }},
		{cmpKey, fmt.Sprintf("keep-alive GETs, some failing or slow on the shadow, %d connections", conns), conns * cmp,
			func(ctx context.Context, d *driver) { d.keepAlivePaths(ctx, cmpKey, s.prodV4, conns, cmp, cmpPath) }},
	}
}

// driver sends requests from the client namespace and checks every
// response is prod's.
type driver struct {
	ns *lab.NS

	mu        sync.Mutex // guards the fields below
	ok        map[string]int
	firstErrs []string // the first few failures, for the report
}

func (d *driver) do(ctx context.Context, c *http.Client, key, method string, to netip.AddrPort, path string, body []byte) {
	want, wantStatus := "hello from prod\n", http.StatusOK
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
		want, wantStatus = "stored by prod\n", http.StatusCreated
	}
	err := func() error {
		req, err := http.NewRequestWithContext(ctx, method, "http://"+to.String()+path, r)
		if err != nil {
			return err
		}
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		got, err := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
		if err != nil {
			return err
		}
		if resp.StatusCode != wantStatus || string(got) != want {
			return fmt.Errorf("%s %s: status %d, body %q; want %d %q", method, path, resp.StatusCode, got, wantStatus, want)
		}
		return nil
	}()
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		if len(d.firstErrs) < maxErrsShown {
			d.firstErrs = append(d.firstErrs, err.Error())
		}
		return
	}
	d.ok[key]++
}

// keepAlive sends per requests on each of conns kept-alive connections,
// the connections in parallel.
func (d *driver) keepAlive(ctx context.Context, key string, to netip.AddrPort, conns, per int) {
	d.keepAlivePaths(ctx, key, to, conns, per, func(c, i int) string { return fmt.Sprintf("/%s/%d/%d", key, c, i) })
}

// keepAlivePaths is keepAlive with request i of connection c to path(c, i).
func (d *driver) keepAlivePaths(ctx context.Context, key string, to netip.AddrPort, conns, per int, path func(c, i int) string) {
	var wg sync.WaitGroup
	for c := range conns {
		wg.Go(func() {
			client := d.ns.HTTPClient(1)
			defer client.CloseIdleConnections()
			for i := 0; i < per && ctx.Err() == nil; i++ {
				d.do(ctx, client, key, http.MethodGet, to, path(c, i), nil)
			}
		})
	}
	wg.Wait()
}

// short sends n GETs, each on its own connection, parallel at a time.
func (d *driver) short(ctx context.Context, key string, to netip.AddrPort, n, parallel int) {
	var wg sync.WaitGroup
	for w := range parallel {
		wg.Go(func() {
			client := d.ns.HTTPClient(1)
			client.Transport.(*http.Transport).DisableKeepAlives = true
			for i := w; i < n && ctx.Err() == nil; i += parallel {
				d.do(ctx, client, key, http.MethodGet, to, fmt.Sprintf("/%s/%d", key, i), nil)
			}
		})
	}
	wg.Wait()
}

// posts sends n POSTs of 1 KiB, 2 KiB, ... 256 KiB (cycling) of seeded
// random bytes over up to parallel kept-alive connections.
func (d *driver) posts(ctx context.Context, key string, to netip.AddrPort, n, parallel int) {
	client := d.ns.HTTPClient(parallel)
	defer client.CloseIdleConnections()
	var wg sync.WaitGroup
	sem := make(chan struct{}, parallel)
	for i := 0; i < n && ctx.Err() == nil; i++ {
		body := make([]byte, 1024<<(i%9))
		rng := rand.New(rand.NewPCG(uint64(i), 7))
		for j := range body {
			body[j] = byte(rng.Uint32())
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			d.do(ctx, client, key, http.MethodPost, to, fmt.Sprintf("/%s/%d", key, i), body)
		})
	}
	wg.Wait()
}
