// Package metrics exposes the daemons' counters to Prometheus and as a
// periodic one-line summary. Datapath packages keep plain atomic counters
// and know nothing of Prometheus; this package reads snapshots of them
// when scraped, so exporting costs the datapath nothing.
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
	"sort"
	"strconv"
	"strings"
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
)

// Sample is one value with its labels.
type Sample struct {
	Name   string // full metric name, e.g. tcpshadow_copy_packets_total
	Help   string
	Kind   Kind
	Labels []string // name, value pairs
	Value  float64
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
		vt := prometheus.CounterValue
		if s.Kind == Gauge {
			vt = prometheus.GaugeValue
		}
		desc := prometheus.NewDesc(s.Name, s.Help, names, nil)
		m, err := prometheus.NewConstMetric(desc, vt, s.Value, values...)
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

// Serve serves /metrics on addr until ctx is done, and Go's profiler
// under /debug/pprof/ if profile is set. It returns once the listener is
// up, so a bad address is an error at startup.
func Serve(ctx context.Context, addr string, src Source, profile bool, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", Handler(src))
	if profile {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	log.Info("serving metrics", "addr", ln.Addr().String())
	return nil
}

// Summary renders the samples as one line: name{labels}=value, zero
// counters left out, sorted for stable output.
func Summary(samples []Sample, prefix string) string {
	parts := make([]string, 0, len(samples))
	for _, s := range samples {
		if s.Value == 0 && s.Kind == Counter {
			continue
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
