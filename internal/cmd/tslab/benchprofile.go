package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// With --profile-dir, each tcpshadow step records the copier's CPU
// profile over its load (--debug-pprof, metrics on prod's loopback), one
// file a step named after it, for go tool pprof.

// startProfile fetches the copier's CPU profile for d into dir/name and
// returns a wait for it; a failure is a warning, never the step's.
func (b *bencher) startProfile(ctx context.Context, name string, d time.Duration) (wait func()) {
	done := make(chan error, 1)
	go func() { done <- b.fetchProfile(ctx, filepath.Join(b.cfg.profileDir, name+".pprof"), d) }()
	return func() {
		if err := <-done; err != nil {
			b.warn("profile %s: %v", name, err)
		}
	}
}

func (b *bencher) fetchProfile(ctx context.Context, path string, d time.Duration) error {
	secs := max(1, int(d/time.Second))
	c := b.st.lab.Prod.HTTPClient(1)
	defer c.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, d+10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		"http://"+b.st.copyMetricsAddr()+"/debug/pprof/profile?seconds="+strconv.Itoa(secs), nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
