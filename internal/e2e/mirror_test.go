package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

// The mirror deployment: nothing of tcpshadow on prod; prod's client NIC
// mirrored into a tunnel toward the assist, which runs the copy daemon
// (reading the session) beside the agent.

// mirrorMetricsPort is the copy daemon's metrics port on the assist (the
// agent has metricsPort there).
const mirrorMetricsPort = "9465"

// startMirrorCopier starts the copy daemon on the assist reading capture
// (a --capture URL) and waits until it is connected to the agent.
func (e *env) startMirrorCopier(captureURL string, extra ...string) {
	e.t.Helper()
	args := []string{"copy", "--capture", captureURL,
		"--map", fmt.Sprintf("%s:80-%s:80", lab.ProdClientSideV4, lab.ShadowV4),
		"--map", fmt.Sprintf("[%s]:80-[%s]:80", lab.ProdClientSideV6, lab.ShadowV6),
		"--intercept", lab.AssistV4.String(),
		"--client-pool", lab.PoolV4.String(), "--client-pool", lab.PoolV6.String(),
		"--metrics", net.JoinHostPort(lab.AssistV4.String(), mirrorMetricsPort),
		"--stats-interval", "0", "--linger", "1s", "--idle-timeout", "10s", "--workers", "2",
		"--secret-file", e.secret,
	}
	name, argv := e.opts.command(append(args, extra...)...)
	var err error
	e.copier, err = e.lab.Assist.Start(context.Background(), name, argv...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.waitFor("mirror copy daemon connected to the agent", 10*time.Second, func() bool {
		m, err := e.mirrorMetrics()
		return err == nil && m["tcpshadow_agent_connected"] == 1
	})
}

func (e *env) mirrorMetrics() (map[string]float64, error) {
	return scrape(e.lab.Assist, net.JoinHostPort(lab.AssistV4.String(), mirrorMetricsPort))
}

// logMirrorMetrics logs the copy daemon's non-zero counters.
func (e *env) logMirrorMetrics(t testing.TB) map[string]float64 {
	m, err := e.mirrorMetrics()
	if err != nil {
		t.Fatalf("mirror copy daemon metrics: %v", err)
	}
	var lines []string
	for k, v := range m {
		if v != 0 && (strings.HasPrefix(k, "tcpshadow_mirror_") || strings.HasPrefix(k, "tcpshadow_copy_events_total") ||
			strings.HasPrefix(k, "tcpshadow_copy_sessions_ended_total")) {
			lines = append(lines, fmt.Sprintf("%s %g", k, v))
		}
	}
	slices.Sort(lines)
	t.Logf("copy daemon on the mirror target:\n%s", strings.Join(lines, "\n"))
	return m
}

// noTcpshadowIn fails the test if a tcpshadow process runs in ns.
func noTcpshadowIn(t *testing.T, ns *lab.NS) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "pids", ns.Name()).Output()
	if err != nil {
		t.Fatalf("ip netns pids %s: %v", ns.Name(), err)
	}
	for _, pid := range strings.Fields(string(out)) {
		comm, err := os.ReadFile("/proc/" + pid + "/comm")
		if err == nil && strings.TrimSpace(string(comm)) == "tcpshadow" {
			t.Fatalf("tcpshadow (pid %s) runs in %s", pid, ns.Name())
		}
	}
}

// TestMirrorVXLAN: prod's client NIC is mirrored (tc mirred, both
// directions) into VXLAN VNI 42 toward the assist, where the copy daemon
// reads the session with --capture vxlan://…?vni=42; no tcpshadow process
// runs in prod. Every request of keep-alive HTTP connections to nginx on
// prod, IPv4 and IPv6, reaches nginx on the shadow; datagrams of another VNI and garbage
// are counted and dropped.
func TestMirrorVXLAN(t *testing.T) {
	const conns, perConn, vni = 8, 50, 42
	e := newEnv(t, envOptions{lateCopier: true, noProdHTTP: true, noShadowHTTP: true, lab: lab.Config{DisableOffloads: true}})
	prodNginx := map[string]*nginx{
		"4": startNginx(t, e.lab.Prod, netip.AddrPortFrom(lab.ProdClientSideV4, 80), 30*time.Second),
		"6": startNginx(t, e.lab.Prod, netip.AddrPortFrom(lab.ProdClientSideV6, 80), 30*time.Second),
	}
	shadowNginx := map[string]*nginx{
		"4": startNginx(t, e.lab.Shadow, netip.AddrPortFrom(lab.ShadowV4, 80), 30*time.Second),
		"6": startNginx(t, e.lab.Shadow, netip.AddrPortFrom(lab.ShadowV6, 80), 30*time.Second),
	}
	hosts := map[string]string{"4": prodV4HTTP, "6": net.JoinHostPort(lab.ProdClientSideV6.String(), "80")}
	if err := e.lab.MirrorProd(context.Background(), vni); err != nil {
		t.Fatal(err)
	}
	e.startMirrorCopier(lab.MirrorTarget(vni))
	noTcpshadowIn(t, e.lab.Prod)

	var wg sync.WaitGroup
	for family, host := range hosts {
		for c := range conns {
			wg.Go(func() {
				client, dials := countingClient(e.lab.Client)
				defer client.CloseIdleConnections()
				for i := range perConn {
					url := fmt.Sprintf("http://%s/mx/%d/%d", host, c, i)
					resp, err := client.Get(url)
					if err != nil {
						t.Errorf("GET %s: %v", url, err)
						return
					}
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK || string(body) != "ok\n" {
						t.Errorf("GET %s: %d %q", url, resp.StatusCode, body)
					}
				}
				if n := dials.Load(); n != 1 {
					t.Errorf("IPv%s connection %d: dialled %d times, want one kept-alive connection", family, c, n)
				}
			})
		}
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	const want = conns * perConn
	for family := range hosts {
		pool := lab.PoolV4
		if family == "6" {
			pool = lab.PoolV6
		}
		prodLog, shadowLog := prodNginx[family], shadowNginx[family]
		// nginx logs a request after answering it.
		if !waitFor(t, fmt.Sprintf("prod's IPv%s log to hold %d requests", family, want), 5*time.Second, func() bool {
			return len(prodLog.accessed(t, "/mx/")) == want
		}) {
			t.Logf("prod's IPv%s log holds %d requests", family, len(prodLog.accessed(t, "/mx/")))
			t.FailNow()
		}
		if !waitFor(t, fmt.Sprintf("the shadow to serve %d IPv%s requests", want, family), 30*time.Second, func() bool {
			return len(shadowLog.accessed(t, "/mx/")) >= want
		}) {
			e.logMirrorMetrics(t)
			t.FailNow()
		}
		seen := map[string]int{}
		for _, a := range shadowLog.accessed(t, "/mx/") {
			seen[a.path]++
			if !pool.Contains(a.from.Addr()) {
				t.Errorf("shadow served %s from %v, outside the pool", a.path, a.from)
			}
		}
		for _, a := range prodLog.accessed(t, "/mx/") {
			if seen[a.path] != 1 {
				t.Errorf("shadow served IPv%s %s %d times, want once", family, a.path, seen[a.path])
			}
		}
	}

	// Another session's VNI and garbage, sent to the target's port from
	// prod: counted, dropped, and the daemon still copies.
	before := e.logMirrorMetrics(t)
	const decoys = 20
	if err := e.lab.Prod.Do(func() error {
		c, err := net.Dial("udp", net.JoinHostPort(lab.AssistV4.String(), "4789"))
		if err != nil {
			return err
		}
		defer c.Close()
		for i := range decoys {
			d := []byte{0x08, 0, 0, 0, 0, 0, vni + 1, 0} // VNI 43
			d = append(d, make([]byte, 60)...)
			if i%2 == 1 {
				d = []byte{0xff, 0xff}
			}
			if _, err := c.Write(d); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var after map[string]float64
	waitFor(t, "decoys counted", 5*time.Second, func() bool {
		m, err := e.mirrorMetrics()
		after = m
		return err == nil && m["tcpshadow_mirror_other_vni_total"]+m["tcpshadow_mirror_bad_tunnel_total"] >=
			before["tcpshadow_mirror_other_vni_total"]+before["tcpshadow_mirror_bad_tunnel_total"]+decoys
	})
	if got := after["tcpshadow_mirror_other_vni_total"] - before["tcpshadow_mirror_other_vni_total"]; got != decoys/2 {
		t.Errorf("other_vni grew by %v, want %d", got, decoys/2)
	}
	if got := after["tcpshadow_mirror_bad_tunnel_total"] - before["tcpshadow_mirror_bad_tunnel_total"]; got != decoys/2 {
		t.Errorf("bad_tunnel grew by %v, want %d", got, decoys/2)
	}
	if after["tcpshadow_mirror_truncated_total"] != 0 {
		t.Errorf("%v frames truncated on a mirror of full frames", after["tcpshadow_mirror_truncated_total"])
	}
	if after[`tcpshadow_copy_events_total{event="from_prod"}`] == 0 {
		t.Error("no packet of prod's side came through the mirror")
	}
	if e.copier.Exited() {
		t.Fatalf("copy daemon exited:\n%s", e.copier.Output())
	}
	noTcpshadowIn(t, e.lab.Prod)
}
