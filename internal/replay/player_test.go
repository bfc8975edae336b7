package replay

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/pcapfile"
)

// fakeClock jumps to each time slept until, plus a lateness it is told.
type fakeClock struct {
	now  time.Time
	late time.Duration
}

func (c *fakeClock) Now() time.Time { return c.now }

func (c *fakeClock) SleepUntil(ctx context.Context, t time.Time) error {
	if t.After(c.now) {
		c.now = t.Add(c.late)
	}
	return ctx.Err()
}

// tcp4 is an IPv4 TCP packet from src:sport to dst:dport, marked.
func tcp4(src, dst string, sport, dport uint16, mark byte) []byte {
	b := make([]byte, 41)
	b[0], b[9] = 0x45, 6
	copy(b[12:], netip.MustParseAddr(src).AsSlice())
	copy(b[16:], netip.MustParseAddr(dst).AsSlice())
	b[20], b[21], b[22], b[23] = byte(sport>>8), byte(sport), byte(dport>>8), byte(dport)
	b[40] = mark
	return b
}

type pkt struct {
	ts int64
	ip []byte
}

func writePcap(t *testing.T, dir, name string, pkts []pkt) string {
	t.Helper()
	var buf bytes.Buffer
	w, err := pcapfile.NewWriter(&buf, pcapfile.LinkRaw)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pkts {
		w.Write(p.ts, p.ip, len(p.ip))
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

type fed struct {
	mark byte
	at   time.Time
	src  netip.Addr
	dst  netip.Addr
}

func play(t *testing.T, cfg Config, c *fakeClock) ([]fed, *Player) {
	t.Helper()
	p, err := NewPlayer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p.clock = c
	var out []fed
	err = p.Run(context.Background(), func(ip []byte, at time.Time) {
		s, _ := netip.AddrFromSlice(ip[12:16])
		d, _ := netip.AddrFromSlice(ip[16:20])
		out = append(out, fed{mark: ip[40], at: at, src: s, dst: d})
	})
	if err != nil {
		t.Fatal(err)
	}
	return out, p
}

const sec = int64(time.Second)

func TestPlayerSchedule(t *testing.T) {
	dir := t.TempDir()
	base := int64(1764669600) * sec
	// Two files, one timeline: the second continues the first, and holds
	// a packet out of time order.
	f1 := writePcap(t, dir, "a.pcap", []pkt{
		{base, tcp4("198.18.0.2", "198.18.0.1", 40000, 80, 1)},
		{base + sec, tcp4("198.18.0.1", "198.18.0.2", 80, 40000, 2)},
	})
	f2 := writePcap(t, dir, "b.pcap", []pkt{
		{base + 3*sec, tcp4("198.18.0.2", "198.18.0.1", 40000, 80, 3)},
		{base + 2*sec, tcp4("198.18.0.2", "198.18.0.1", 40000, 80, 4)},
		{base + 4*sec, tcp4("198.18.0.9", "198.18.0.8", 1, 2, 5)}, // neither side a server's
	})
	files, err := Scan([]string{f1, f2})
	if err != nil {
		t.Fatal(err)
	}
	if first, span := Span(files); first != base || span != 4*sec {
		t.Fatalf("span from %d for %d, want %d for 4s", first, span, base)
	}
	isServer := func(a netip.Addr, port uint16) bool { return port == 80 && a == netip.MustParseAddr("198.18.0.1") }
	for _, speed := range []float64{1, 4, 0.5} {
		start := time.Unix(1000, 0)
		c := &fakeClock{now: start, late: 3 * time.Millisecond}
		cfg := Config{Files: files, Speed: speed, Loop: 2, PassGap: time.Second, IsServer: isServer, Lead: 100 * time.Millisecond}
		got, p := play(t, cfg, c)
		if len(got) != 10 {
			t.Fatalf("speed %v: fed %d packets, want 10", speed, len(got))
		}
		scale := func(d int64) time.Duration { return time.Duration(float64(d) / speed) }
		origin := start.Add(100 * time.Millisecond)
		passLen := scale(4*sec) + time.Second
		want := []int64{0, 1, 3, 2, 4} // file seconds of marks 1..5
		for i, g := range got {
			pass := i / 5
			mark := byte(i%5 + 1)
			at := origin.Add(time.Duration(pass)*passLen + scale(want[i%5]*sec))
			if g.mark != mark || !g.at.Equal(at) {
				t.Errorf("speed %v packet %d: mark %d at %v, want mark %d at %v", speed, i, g.mark, g.at.Sub(origin), mark, at.Sub(origin))
			}
			client, server := netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("198.18.0.1")
			if pass == 1 {
				client = netip.MustParseAddr("198.18.1.2")
			}
			switch mark {
			case 1, 3, 4:
				if g.src != client || g.dst != server {
					t.Errorf("pass %d mark %d: %v → %v, want %v → %v", pass, mark, g.src, g.dst, client, server)
				}
			case 2:
				if g.src != server || g.dst != client {
					t.Errorf("pass %d mark %d: %v → %v, want %v → %v", pass, mark, g.src, g.dst, server, client)
				}
			case 5:
				if g.src != netip.MustParseAddr("198.18.0.9") {
					t.Errorf("pass %d: a packet of no server moved to %v", pass, g.src)
				}
			}
		}
		pr := p.Progress()
		if pr.Packets != 10 || pr.Reordered != 2 || pr.LateMax != 3*time.Millisecond || pr.LateP50 < 2*time.Millisecond || pr.LateP50 > 3*time.Millisecond {
			t.Errorf("speed %v: progress %+v; want 10 packets, 2 reordered, late max 3ms", speed, pr)
		}
		pr.LastSent = 2*passLen - time.Second // both passes, to the last packet
		if a := pr.Achieved(); a < speed*0.99 || a > speed*1.01 {
			t.Errorf("speed %v: achieved %v", speed, a)
		}
		if s := pr.Summary(); !strings.Contains(s, "achieved") || !strings.Contains(pr.Bar(), "pass 2/2") {
			t.Errorf("summary %q bar %q", s, pr.Bar())
		}
	}
}

func TestPlayerStops(t *testing.T) {
	dir := t.TempDir()
	f := writePcap(t, dir, "a.pcap", []pkt{{0, tcp4("1.1.1.1", "2.2.2.2", 1, 2, 1)}, {3600 * sec, tcp4("1.1.1.1", "2.2.2.2", 1, 2, 2)}})
	files, err := Scan([]string{f})
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPlayer(Config{Files: files, Speed: 1, Loop: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := 0
	done := make(chan error)
	go func() { done <- p.Run(ctx, func([]byte, time.Time) { n++; cancel() }) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) || n != 1 {
			t.Errorf("Run returned %v after %d packets, want canceled after 1", err, n)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not stop with its context")
	}
}

func TestScanErrors(t *testing.T) {
	dir := t.TempDir()
	good := writePcap(t, dir, "good.pcap", []pkt{{0, tcp4("1.1.1.1", "2.2.2.2", 1, 2, 1)}})
	b, _ := os.ReadFile(good)
	trunc := filepath.Join(dir, "trunc.pcap")
	os.WriteFile(trunc, b[:len(b)-5], 0o600)
	garbage := filepath.Join(dir, "garbage.pcap")
	os.WriteFile(garbage, []byte("this is no capture at all"), 0o600)
	for _, c := range []struct {
		path string
		is   error
		msg  string
	}{
		{trunc, pcapfile.ErrTruncated, "trunc.pcap: offset 24: file ends inside a record"},
		{garbage, pcapfile.ErrNotCapture, "garbage.pcap: offset 0: not a pcap or pcapng file"},
	} {
		_, err := Scan([]string{good, c.path})
		if !errors.Is(err, c.is) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("Scan %s: %v, want %q", c.path, err, c.msg)
		}
	}
	// A directory stands for its captures, in name order.
	os.Remove(trunc)
	os.Remove(garbage)
	writePcap(t, dir, "a.pcapng", nil)
	os.WriteFile(filepath.Join(dir, "notes.txt"), nil, 0o600)
	got, err := Expand([]string{dir})
	if err != nil || len(got) != 2 || filepath.Base(got[0]) != "a.pcapng" || filepath.Base(got[1]) != "good.pcap" {
		t.Errorf("Expand: %v %v", got, err)
	}
}

func TestDriftQuantiles(t *testing.T) {
	var d Drift
	for i := 1; i <= 1000; i++ {
		d.Observe(time.Duration(i) * time.Microsecond)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Microsecond}, {0.99, 990 * time.Microsecond}, {1, 1000 * time.Microsecond}} {
		got := d.Quantile(c.q)
		if got < c.want || float64(got) > float64(c.want)*1.25 {
			t.Errorf("q%v: %v, want %v within a bucket", c.q, got, c.want)
		}
	}
	if d.Max() != time.Millisecond || d.Count() != 1000 {
		t.Errorf("max %v count %d", d.Max(), d.Count())
	}
	if n := testing.AllocsPerRun(100, func() { d.Observe(time.Millisecond) }); n != 0 {
		t.Errorf("Observe allocates %v", n)
	}
}
