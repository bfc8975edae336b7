package e2e

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

// do sends one request and checks the client got prod's response intact.
func do(t *testing.T, c *http.Client, method, url string, body []byte, path string) {
	t.Helper()
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		t.Error(err)
		return
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Errorf("%s %s: %v", method, url, err)
		return
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(got, responseFor(path)) {
		t.Errorf("%s %s: status %d, err %v, body intact %v", method, url, resp.StatusCode, err, bytes.Equal(got, responseFor(path)))
	}
}

// keepAlive runs conns connections in parallel, each sending n requests
// over one kept-alive connection.
func keepAlive(t *testing.T, l *lab.Lab, host, prefix string, conns, n int) {
	var wg sync.WaitGroup
	for c := 0; c < conns; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := l.Client.HTTPClient(1)
			defer client.CloseIdleConnections()
			for i := 0; i < n; i++ {
				path := fmt.Sprintf("%s/%d/%d", prefix, c, i)
				do(t, client, http.MethodGet, "http://"+host+path, nil, path)
			}
		}()
	}
	wg.Wait()
}

// TestCopyHTTP drives HTTP/1.1 traffic from the client to prod and checks
// the shadow receives every request, byte-identical, from the pool, while
// no shadow packet reaches the client (scenarios 1, 2, 4, 7, 9, 17, 18, 26
// exercised by real stacks).
func TestCopyHTTP(t *testing.T) {
	e := newEnv(t, envOptions{})
	base, err := e.copyMetrics()
	if err != nil {
		t.Fatal(err)
	}
	v4 := netip.AddrPortFrom(lab.ProdClientSideV4, 80).String()
	v6 := netip.AddrPortFrom(lab.ProdClientSideV6, 80).String()

	t.Run("500ShortConnections", func(t *testing.T) {
		const total, parallel = 500, 10
		var wg sync.WaitGroup
		for w := 0; w < parallel; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				client := e.lab.Client.HTTPClient(1)
				client.Transport.(*http.Transport).DisableKeepAlives = true
				for i := w; i < total; i += parallel {
					path := fmt.Sprintf("/short/%d", i)
					do(t, client, http.MethodGet, "http://"+v4+path, nil, path)
				}
			}()
		}
		wg.Wait()
		e.checkCopied(t, "/short/", total)
	})

	t.Run("KeepAlive20x50", func(t *testing.T) {
		keepAlive(t, e.lab, v4, "/ka4", 20, 50)
		e.checkCopied(t, "/ka4/", 1000)
	})

	t.Run("Posts1KiBto1MiB", func(t *testing.T) {
		client := e.lab.Client.HTTPClient(4)
		defer client.CloseIdleConnections()
		rng := rand.New(rand.NewPCG(7, 7))
		var wg sync.WaitGroup
		sem := make(chan struct{}, 4)
		for i := 0; i < 50; i++ {
			size := 1024 << (i % 11) // 1 KiB .. 1 MiB
			body := make([]byte, size)
			for j := range body {
				body[j] = byte(rng.Uint32())
			}
			path := fmt.Sprintf("/post/%d", i)
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				do(t, client, http.MethodPost, "http://"+v4+path, body, path)
			}()
		}
		wg.Wait()
		e.checkCopied(t, "/post/", 50)
	})

	t.Run("KeepAlive20x50IPv6", func(t *testing.T) {
		keepAlive(t, e.lab, v6, "/ka6", 20, 50)
		e.checkCopied(t, "/ka6/", 1000)
	})

	if n := e.shadowLeaks(); n != 0 {
		t.Fatalf("%d packets from the shadow reached the client namespace", n)
	}
	e.drained(t, 30*time.Second)
	e.dumpMetrics(t)
	// Counters agree with the traffic: every request was captured at
	// least once, the agent relayed replies.
	const requests = 500 + 1000 + 50 + 1000
	cm, err := e.copyMetrics()
	if err != nil {
		t.Fatal(err)
	}
	if got := cm[`tcpshadow_copy_events_total{event="captured"}`]; got < requests {
		t.Fatalf("captured %v packets for %d requests", got, requests)
	}
	m, err := e.agentMetrics()
	if err != nil {
		t.Fatal(err)
	}
	if m["tcpshadow_intercept_relayed_total"] == 0 {
		t.Fatal("agent relayed nothing")
	}
	// No goroutine outlives the sessions: back to the idle daemon's count.
	e.waitFor("the copier's goroutines back to their idle count", 10*time.Second, func() bool {
		m, err := e.copyMetrics()
		return err == nil && m["go_goroutines"] <= base["go_goroutines"]
	})
}
