// Package metrics exposes the daemons' counters to Prometheus and as a
// periodic one-line summary. Datapath packages keep plain atomic counters
// and know nothing of Prometheus; this package reads snapshots of them
// when scraped, so exporting costs the datapath nothing.
//
// Its listener must not become a way in: every connection is bounded in
// time (headers, whole request, response, idle keep-alive) and in header
// size, connections beyond MaxConns are closed as they come, and Go's
// profiler is served on a loopback address only, to loopback clients only,
// with profiles and traces of at most MaxProfileSeconds.
package metrics

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Kind says how a value behaves.
type Kind int

const (
	Counter Kind = iota
	Gauge
	// Histogram: Value is the sum of the observations, Count their number
	// and Buckets the cumulative count at each upper bound.
	Histogram
)

// Sample is one value with its labels.
type Sample struct {
	Name   string // full metric name, e.g. tcpshadow_copy_packets_total
	Help   string
	Kind   Kind
	Labels []string // name, value pairs
	Value  float64
	// Count and Buckets are a Histogram's; nil Buckets for the others.
	Count   uint64
	Buckets map[float64]uint64
}

// Counters returns a function making counter samples named
// prefix+name+"_total": the shape of every package's counter list.
func Counters(prefix string) func(name, help string, v uint64) Sample {
	return func(name, help string, v uint64) Sample {
		return Sample{Name: prefix + name + "_total", Help: help, Value: float64(v)}
	}
}

// Source produces the current samples; it is called on every scrape and
// every summary, from any goroutine.
type Source func() []Sample

type collector struct{ src Source }

func (c collector) Describe(chan<- *prometheus.Desc) {} // unchecked collector: samples vary by label

func (c collector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.src() {
		var names, values []string
		for i := 0; i+1 < len(s.Labels); i += 2 {
			names = append(names, s.Labels[i])
			values = append(values, s.Labels[i+1])
		}
		desc := prometheus.NewDesc(s.Name, s.Help, names, nil)
		var m prometheus.Metric
		var err error
		switch s.Kind {
		case Histogram:
			m, err = prometheus.NewConstHistogram(desc, s.Count, s.Value, s.Buckets, values...)
		case Gauge:
			m, err = prometheus.NewConstMetric(desc, prometheus.GaugeValue, s.Value, values...)
		default:
			m, err = prometheus.NewConstMetric(desc, prometheus.CounterValue, s.Value, values...)
		}
		if err == nil {
			ch <- m
		}
	}
}

// Handler returns an HTTP handler serving the samples of src plus the Go
// runtime and process metrics.
func Handler(src Source) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{src})
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// The listener's bounds.
const (
	// MaxConns bounds the connections served at once; more are closed
	// as they are accepted.
	MaxConns = 64
	// MaxProfileSeconds bounds the seconds= of a CPU profile or a trace.
	MaxProfileSeconds = 30
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = MaxProfileSeconds*time.Second + 10*time.Second
	idleTimeout       = 30 * time.Second
	maxHeaderBytes    = 8 << 10
)

// ErrPprofNotLoopback refuses the profiler on an address that is not
// loopback: profiles and traces cost CPU and tell a lot.
var ErrPprofNotLoopback = errors.New("the profiler is served on a loopback address only (such as 127.0.0.1:9464)")

// IsLoopback reports whether addr, a listen address HOST:PORT, binds
// loopback only: an IPv4 or IPv6 loopback address, or localhost. An empty
// host (every address) is not.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// Serve serves /metrics on addr until ctx is done, and Go's profiler
// under /debug/pprof/ if profile is set, which addr must then be a
// loopback address for (ErrPprofNotLoopback). It returns once the
// listener is up, so a bad address is an error at startup.
func Serve(ctx context.Context, addr string, src Source, profile bool, log *slog.Logger) error {
	return ServeWith(ctx, addr, src, profile, nil, log)
}

// ServeWith is Serve with more handlers on the same listener, by path
// pattern (such as the comparison's /report and /report.json), under the
// same bounds.
func ServeWith(ctx context.Context, addr string, src Source, profile bool, extra map[string]http.Handler, log *slog.Logger) error {
	if profile && !IsLoopback(addr) {
		return fmt.Errorf("metrics %s: %w", addr, ErrPprofNotLoopback)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics listen %s: %w", addr, err)
	}
	srv := newServer(src, profile, extra)
	lln := limitListener(ln, MaxConns)
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	go func() {
		if err := srv.Serve(lln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	log.Info("serving metrics", "addr", ln.Addr().String())
	return nil
}

// newServer returns the HTTP server of Serve.
func newServer(src Source, profile bool, extra map[string]http.Handler) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", Handler(src))
	for pattern, h := range extra {
		mux.Handle(pattern, h)
	}
	if profile {
		mux.Handle("/debug/pprof/", loopbackOnly(http.HandlerFunc(pprof.Index)))
		mux.Handle("/debug/pprof/profile", loopbackOnly(boundedSeconds(http.HandlerFunc(pprof.Profile))))
		mux.Handle("/debug/pprof/symbol", loopbackOnly(http.HandlerFunc(pprof.Symbol)))
		mux.Handle("/debug/pprof/trace", loopbackOnly(boundedSeconds(http.HandlerFunc(pprof.Trace))))
	}
	return &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
	}
}

// loopbackOnly serves h to loopback clients only.
func loopbackOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ap, err := netip.ParseAddrPort(r.RemoteAddr)
		if err != nil || !ap.Addr().Unmap().IsLoopback() {
			http.Error(w, "the profiler is for loopback clients only", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// boundedSeconds refuses a profile or trace longer than MaxProfileSeconds.
func boundedSeconds(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s := r.URL.Query().Get("seconds"); s != "" {
			n, err := strconv.ParseFloat(s, 64)
			if err != nil || n <= 0 || n > MaxProfileSeconds {
				http.Error(w, fmt.Sprintf("seconds=%s: want (0, %d]", s, MaxProfileSeconds), http.StatusBadRequest)
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

// limitListener closes, as soon as it is accepted, every connection beyond
// max open at once: a flood of idle connections costs one descriptor
// each for an instant, not one for as long as it lasts.
func limitListener(ln net.Listener, max int) net.Listener {
	return &limitedListener{Listener: ln, sem: make(chan struct{}, max)}
}

type limitedListener struct {
	net.Listener
	sem chan struct{}
}

func (l *limitedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.sem <- struct{}{}:
			return &limitedConn{Conn: c, release: func() { <-l.sem }}, nil
		default:
			c.Close()
		}
	}
}

type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// Summary renders the samples as one line: name{labels}=value, zero
// counters left out, sorted for stable output.
func Summary(samples []Sample, prefix string) string {
	parts := make([]string, 0, len(samples))
	for _, s := range samples {
		if s.Value == 0 && s.Kind == Counter || s.Kind == Histogram {
			continue // a histogram is no one number
		}
		name := strings.TrimPrefix(s.Name, prefix)
		name = strings.TrimSuffix(name, "_total")
		for i := 1; i < len(s.Labels); i += 2 {
			name += "." + s.Labels[i]
		}
		parts = append(parts, fmt.Sprintf("%s=%g", name, s.Value))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

// LogEvery logs a summary of src every interval until ctx is done.
func LogEvery(ctx context.Context, interval time.Duration, src Source, prefix string, log *slog.Logger) {
	if interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			log.Info("stats", "summary", Summary(src(), prefix))
		}
	}
}

// Scrape fetches a Prometheus text exposition from url with c and returns
// each sample as "name{labels}" → value: what tests and the lab tools read
// the daemons' counters with.
func Scrape(c *http.Client, url string) (map[string]float64, error) {
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", url, resp.Status)
	}
	m := make(map[string]float64)
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		m[line[:i]] = v
	}
	return m, sc.Err()
}
