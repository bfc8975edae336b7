package e2e

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/lab"
	"github.com/tcpshadow/tcpshadow/internal/pcapfile"
)

// replayTraffic is the HTTP the replay tests capture: keep-alive
// connections of requests to nginx on prod, one-request connections, and
// one connection opened before the capture starts (joined mid-stream on
// replay: only its later requests are in the files).
const (
	replayConns   = 4
	replayPerConn = 25
	replayOneShot = 5
	replayPre     = 5 // requests of the early connection on each side of the capture's start
)

// captureReplayTraffic starts the captures (start, which returns what
// stops them), makes the traffic, stops them, and returns the requests
// captured per connection, in order: path prefix → paths.
func captureReplayTraffic(t *testing.T, e *env, start func() (stop func())) map[string][]string {
	t.Helper()
	host := net.JoinHostPort(lab.ProdClientSideV4.String(), "80")
	get := func(c *http.Client, path string) {
		resp, err := c.Get("http://" + host + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d", path, resp.StatusCode)
		}
	}
	want := map[string][]string{}
	early, dials := countingClient(e.lab.Client)
	defer early.CloseIdleConnections()
	for i := range replayPre {
		get(early, fmt.Sprintf("/rp/pre/%d", i)) // before the capture: not in the files
	}
	stop := start()
	for i := replayPre; i < 2*replayPre; i++ {
		p := fmt.Sprintf("/rp/pre/%d", i)
		get(early, p)
		want["/rp/pre/"] = append(want["/rp/pre/"], p)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for c := range replayConns {
		wg.Go(func() {
			client := e.lab.Client.HTTPClient(1)
			defer client.CloseIdleConnections()
			prefix := fmt.Sprintf("/rp/%d/", c)
			for i := range replayPerConn {
				get(client, fmt.Sprintf("%s%d", prefix, i))
				mu.Lock()
				want[prefix] = append(want[prefix], fmt.Sprintf("%s%d", prefix, i))
				mu.Unlock()
				time.Sleep(10 * time.Millisecond) // think time, for the schedule to keep
			}
		})
	}
	wg.Wait()
	for i := range replayOneShot {
		client := e.lab.Client.HTTPClient(1)
		prefix := fmt.Sprintf("/rp/once%d/", i)
		get(client, prefix+"0")
		want[prefix] = []string{prefix + "0"}
		client.CloseIdleConnections()
	}
	early.CloseIdleConnections()
	if n := dials.Load(); n != 1 {
		t.Fatalf("the early connection was dialled %d times, want 1", n)
	}
	time.Sleep(500 * time.Millisecond) // the last FINs
	stop()
	return want
}

// tcpdumps returns a start for captureReplayTraffic running a tcpdump in
// prod for each argument list.
func tcpdumps(t *testing.T, e *env, captures ...[]string) func() func() {
	return func() func() {
		var dumps []*lab.Process
		for _, args := range captures {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // bounds tcpdump
			t.Cleanup(cancel)
			p, err := e.lab.Prod.Start(ctx, "tcpdump", append([]string{"-Z", "root", "-U", "--immediate-mode", "-B", "32768", "-s", "0", "-n"}, append(args, "tcp port 80")...)...)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { p.Stop(5 * time.Second) })
			dumps = append(dumps, p)
		}
		for _, p := range dumps {
			waitFor(t, "tcpdump listening", 10*time.Second, func() bool { return strings.Contains(p.Output(), "listening on") })
		}
		return func() {
			for _, p := range dumps {
				p.Stop(5 * time.Second)
				if out := p.Output(); !strings.Contains(out, "packets captured") || !strings.Contains(out, "\n0 packets dropped by kernel") {
					// A capture that lost packets replays as one: its sessions
					// end at the gap (scenario 11), not this test's subject.
					t.Fatalf("tcpdump did not capture every packet:\n%s", out)
				}
				t.Logf("tcpdump: %s", strings.TrimSpace(p.Output()))
			}
		}
	}
}

// runReplay replays files in prod and returns its output; args are extra
// flags.
func (e *env) runReplay(t *testing.T, files []string, args ...string) (string, error) {
	t.Helper()
	argv := append([]string{"replay"}, files...)
	argv = append(argv,
		"--map", fmt.Sprintf("%s:80-%s:80", lab.ProdClientSideV4, lab.ShadowV4),
		"--intercept", lab.AssistV4.String(), "--client-pool", lab.PoolV4.String(),
		"--secret-file", e.secret, "--no-divergence-log", "--linger", "1s", "--workers", "2",
		"--progress-interval", "1s")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := e.lab.Prod.Run(ctx, binPath, append(argv, args...)...)
	return string(out), err
}

// checkReplayed asserts the shadow served each captured request passes
// times since before (its access log's length then), in prod's order on
// each connection, each connection from one forged client of the pool.
func checkReplayed(t *testing.T, shadow *nginx, before int, want map[string][]string, passes int) {
	t.Helper()
	total := 0
	for _, paths := range want {
		total += len(paths) * passes
	}
	var got []accessEntry
	waitFor(t, fmt.Sprintf("the shadow to serve %d replayed requests", total), 10*time.Second, func() bool {
		got = shadow.accessed(t, "/rp/")[before:]
		return len(got) >= total
	})
	if len(got) != total {
		t.Fatalf("the shadow served %d requests, want %d", len(got), total)
	}
	for prefix, paths := range want {
		byConn := map[netip.AddrPort][]string{}
		for _, a := range got {
			if strings.HasPrefix(a.path, prefix) && !strings.Contains(a.path[len(prefix):], "/") {
				byConn[a.from] = append(byConn[a.from], a.path)
				if !lab.PoolV4.Contains(a.from.Addr()) {
					t.Errorf("%s from %v, outside the pool", a.path, a.from)
				}
			}
		}
		if len(byConn) != passes {
			t.Errorf("%s: served on %d connections, want %d (one a pass): %v", prefix, len(byConn), passes, byConn)
			continue
		}
		for from, served := range byConn {
			if strings.Join(served, " ") != strings.Join(paths, " ") {
				t.Errorf("%s from %v: served %v, want %v", prefix, from, served, paths)
			}
		}
	}
}

// TestReplay: tcpdump in prod captures HTTP to nginx, both directions, on
// prod's interface (Ethernet) and on "any" (Linux cooked v1 and v2); each
// capture, and the Ethernet one rewritten as pcapng, replayed against
// nginx on the shadow at --speed 1, 2 and 4 (and twice with --loop 2),
// makes the shadow serve every captured request, in order per connection,
// and nothing else: the early connection's requests from before the
// capture are not served, its later ones are (joined mid-stream).
// Garbage, truncated files and an unknown link type fail with the file
// and offset, before anything is sent.
func TestReplay(t *testing.T) {
	e := newEnv(t, envOptions{lateCopier: true, noProdHTTP: true, noShadowHTTP: true})
	startNginx(t, e.lab.Prod, netip.AddrPortFrom(lab.ProdClientSideV4, 80), 30*time.Second)
	shadow := startNginx(t, e.lab.Shadow, netip.AddrPortFrom(lab.ShadowV4, 80), 30*time.Second)
	dir := t.TempDir()
	eth, sll, sll2 := filepath.Join(dir, "eth.pcap"), filepath.Join(dir, "sll.pcap"), filepath.Join(dir, "sll2.pcap")
	want := captureReplayTraffic(t, e, tcpdumps(t, e,
		[]string{"-i", lab.ProdClientLink, "-w", eth},
		[]string{"-i", "any", "-y", "LINUX_SLL", "-w", sll},
		[]string{"-i", "any", "-y", "LINUX_SLL2", "-w", sll2},
	))
	ng := filepath.Join(dir, "eth.pcapng")
	toPcapng(t, eth, ng)
	for path, link := range map[string]pcapfile.LinkType{eth: pcapfile.LinkEthernet, sll: pcapfile.LinkSLL, sll2: pcapfile.LinkSLL2, ng: pcapfile.LinkEthernet} {
		if got := firstLink(t, path); got != link {
			t.Fatalf("%s holds %v, want %v", path, got, link)
		}
	}
	// libpcap reads the pcapng as tcpdump's own file.
	if a, b := tcpdumpCount(t, e, eth), tcpdumpCount(t, e, ng); a != b || a == 0 {
		t.Fatalf("tcpdump -r reads %d packets in the pcap, %d in the pcapng", a, b)
	}

	for i, run := range []struct {
		file  string
		speed string
		loop  int
	}{
		{eth, "1", 1}, {eth, "4", 1}, {ng, "4", 1}, {sll, "2", 1}, {sll2, "4", 2},
	} {
		t.Run(fmt.Sprintf("%s@%s", filepath.Base(run.file), run.speed), func(t *testing.T) {
			before := len(shadow.accessed(t, "/rp/"))
			// Each run forges other addresses: none meets a connection
			// of an earlier run in the shadow's TIME_WAIT.
			out, err := e.runReplay(t, []string{run.file}, "--speed", run.speed, "--loop", fmt.Sprint(run.loop), "--pool-seed", fmt.Sprint(i+1))
			t.Logf("replay:\n%s", out)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out, "achieved") || !strings.Contains(out, "drift: packets handed over late by p50") {
				t.Errorf("no summary in the output")
			}
			if !strings.Contains(out, "(1 joined mid-stream)") && run.loop == 1 {
				t.Errorf("the early connection was not joined mid-stream")
			}
			total := 0
			for _, paths := range want {
				total += len(paths) * run.loop
			}
			if !strings.Contains(out, fmt.Sprintf(", %d requests,", total)) {
				t.Errorf("the summary does not count the %d requests replayed", total)
			}
			checkReplayed(t, shadow, before, want, run.loop)
		})
	}

	t.Run("bad files", func(t *testing.T) {
		before := len(shadow.accessed(t, "/rp/"))
		garbage := filepath.Join(dir, "garbage.pcap")
		os.WriteFile(garbage, []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), 0o600)
		b, err := os.ReadFile(eth)
		if err != nil {
			t.Fatal(err)
		}
		// Cut inside the last record: 3 bytes short of its end.
		truncated := filepath.Join(dir, "truncated.pcap")
		os.WriteFile(truncated, b[:len(b)-3], 0o600)
		lastRecord := lastRecordOffset(t, eth)
		linkType := filepath.Join(dir, "usb.pcap")
		usb := append([]byte(nil), b[:24]...)
		binary.LittleEndian.PutUint32(usb[20:], 189) // LINKTYPE_USB_LINUX
		os.WriteFile(linkType, usb, 0o600)
		for _, c := range []struct {
			files []string
			msg   string
		}{
			{[]string{garbage}, garbage + ": offset 0: not a pcap or pcapng file"},
			// The good file first: nothing of it may go before the bad one fails.
			{[]string{eth, truncated}, fmt.Sprintf("%s: offset %d: file ends inside a record", truncated, lastRecord)},
			{[]string{linkType}, linkType + ": offset 20: unsupported link type: link type 189"},
			{[]string{filepath.Join(dir, "missing.pcap")}, "no such file"},
		} {
			out, err := e.runReplay(t, c.files)
			if err == nil || !strings.Contains(out, c.msg) {
				t.Errorf("replay %v: %v, output %q; want a failure saying %q", c.files, err, out, c.msg)
			}
		}
		time.Sleep(500 * time.Millisecond)
		if n := len(shadow.accessed(t, "/rp/")); n != before {
			t.Errorf("the shadow served %d requests of failed replays", n-before)
		}
	})
}

// toPcapng rewrites a pcap file as pcapng, one interface of its link type.
func toPcapng(t *testing.T, from, to string) {
	t.Helper()
	in, err := pcapfile.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	f, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	bw := bufio.NewWriter(f)
	w, err := pcapfile.NewNgWriter(bw)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[pcapfile.LinkType]int{}
	for {
		rec, err := in.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		id, ok := ids[rec.Link]
		if !ok {
			if id, err = w.Iface(rec.Link); err != nil {
				t.Fatal(err)
			}
			ids[rec.Link] = id
		}
		if err := w.Write(id, rec.Time, rec.Frame, rec.OrigLen); err != nil {
			t.Fatal(err)
		}
	}
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
}

func firstLink(t *testing.T, path string) pcapfile.LinkType {
	t.Helper()
	f, err := pcapfile.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rec, err := f.Next()
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return rec.Link
}

// lastRecordOffset returns where a pcap file's last record starts.
func lastRecordOffset(t *testing.T, path string) int64 {
	t.Helper()
	f, err := pcapfile.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	last := f.Offset()
	for {
		at := f.Offset()
		if _, err := f.Next(); err != nil {
			return last
		}
		last = at
	}
}

// tcpdumpCount returns how many packets tcpdump reads in a file.
func tcpdumpCount(t *testing.T, e *env, path string) int {
	t.Helper()
	out, err := e.lab.Prod.Run(context.Background(), "tcpdump", "-nr", path)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, " IP ") {
			n++
		}
	}
	return n
}

// TestRecordReplay: copy --record, while the copier copies live traffic
// to the shadow, writes both directions to rotating pcap files; once it
// stopped, the directory replayed at --speed 2 makes the shadow serve
// every recorded request again, in order per connection.
func TestRecordReplay(t *testing.T) {
	e := newEnv(t, envOptions{lateCopier: true, noProdHTTP: true, noShadowHTTP: true})
	startNginx(t, e.lab.Prod, netip.AddrPortFrom(lab.ProdClientSideV4, 80), 30*time.Second)
	shadow := startNginx(t, e.lab.Shadow, netip.AddrPortFrom(lab.ShadowV4, 80), 30*time.Second)
	dir := t.TempDir()
	e.opts.copyArgs = []string{"--record", dir, "--record-size", "1MiB", "--no-divergence-log"}
	want := captureReplayTraffic(t, e, func() func() {
		e.startCopier()
		return func() {
			e.drained(t, 20*time.Second)
			if err := e.copier.Stop(10 * time.Second); err != nil {
				t.Fatalf("copy daemon: %v\n%s", err, e.copier.Output())
			}
		}
	})
	live := len(shadow.accessed(t, "/rp/"))
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, en := range ents {
		names = append(names, en.Name())
	}
	if len(names) != 1 || !strings.HasSuffix(names[0], ".pcap") {
		t.Fatalf("the recording holds %v, want one completed .pcap", names)
	}
	out, err := e.runReplay(t, []string{dir}, "--speed", "2", "--pool-seed", "7")
	t.Logf("replay:\n%s", out)
	if err != nil {
		t.Fatal(err)
	}
	checkReplayed(t, shadow, live, want, 1)
}
