package pcapdump

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/tcpshadow/tcpshadow/capture"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

var discard = slog.New(slog.DiscardHandler)

// synPacket builds a SYN from src to dst: a 40 or 60 byte IP packet.
func synPacket(t testing.TB, src, dst netip.AddrPort) []byte {
	t.Helper()
	seg := rewrite.Segment{Src: src, Dst: dst, Seq: 1000, Flags: rewrite.FlagSYN, Window: 64240}
	b := make([]byte, seg.Len())
	if _, err := seg.Put(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// tcpPacket builds an IP packet carrying a TCP segment with payload.
func tcpPacket(t testing.TB, src, dst string, payload string) []byte {
	t.Helper()
	seg := rewrite.Segment{
		Src: netip.MustParseAddrPort(src), Dst: netip.MustParseAddrPort(dst),
		Seq: 1, Ack: 2, Flags: rewrite.FlagACK | rewrite.FlagPSH, Window: 100,
		Payload: []byte(payload),
	}
	b := make([]byte, seg.Len())
	if _, err := seg.Put(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// tcpdumpLines reads a pcap file with tcpdump -nn and returns its lines.
func tcpdumpLines(t testing.TB, path string) []string {
	t.Helper()
	if _, err := exec.LookPath("tcpdump"); err != nil {
		t.Fatal("tcpdump not found: scripts/deps.sh installs it")
	}
	cmd := exec.Command("tcpdump", "-r", path, "-nn", "-t")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tcpdump -r %s: %v\n%s", path, err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "link-type RAW") {
		t.Errorf("tcpdump -r %s: %q, want link-type RAW", path, stderr.String())
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

// synPorts returns the source ports of tcpdump's SYN lines from 198.18.0.2
// or 2001:2::2 to the shadow's port 80; any other line fails the test.
func synPorts(t testing.TB, lines []string) []int {
	t.Helper()
	var ports []int
	for _, l := range lines {
		var ip, src string
		var port int
		switch {
		case strings.HasPrefix(l, "IP 198.18.0.2."):
			ip, src = "IP", "198.18.0.2"
		case strings.HasPrefix(l, "IP6 2001:2::2."):
			ip, src = "IP6", "2001:2::2"
		default:
			t.Fatalf("unexpected tcpdump line %q", l)
		}
		rest := strings.TrimPrefix(l, ip+" "+src+".")
		p, after, _ := strings.Cut(rest, " ")
		port, err := strconv.Atoi(p)
		if err != nil {
			t.Fatalf("tcpdump line %q: %v", l, err)
		}
		if !strings.HasPrefix(after, "> 198.18.1.2.80: Flags [S]") && !strings.HasPrefix(after, "> 2001:2:0:1::2.80: Flags [S]") {
			t.Fatalf("tcpdump line %q: want a SYN to the shadow's port 80", l)
		}
		ports = append(ports, port)
	}
	return ports
}

// syn builds packet i: IPv4 for even i, IPv6 for odd, source port 10000+i.
func syn(t testing.TB, i int) []byte {
	if i%2 == 0 {
		return synPacket(t, netip.MustParseAddrPort(fmt.Sprintf("198.18.0.2:%d", 10000+i)), netip.MustParseAddrPort("198.18.1.2:80"))
	}
	return synPacket(t, netip.MustParseAddrPort(fmt.Sprintf("[2001:2::2]:%d", 10000+i)), netip.MustParseAddrPort("[2001:2:0:1::2]:80"))
}

// TestDumpRotation writes more packets than the files hold and checks the
// set logrotate would keep: FILE newest, FILE.1, FILE.2 older, none
// beyond; each file within its bound, readable by tcpdump, and together a
// gapless tail of what was written.
func TestDumpRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "copy.pcap")
	const maxBytes, files, n = 600, 3, 30
	d, err := Open(Config{Path: path, MaxBytes: maxBytes, Files: files}, discard)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		d.WriteIP(time.Now(), syn(t, i))
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	var all []int
	for i := files - 1; i >= 0; i-- {
		p := path
		if i > 0 {
			p += "." + strconv.Itoa(i)
		}
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > maxBytes {
			t.Errorf("%s: %d bytes, over the %d bound", p, fi.Size(), maxBytes)
		}
		ports := synPorts(t, tcpdumpLines(t, p))
		if len(ports) == 0 {
			t.Errorf("%s: no packets", p)
		}
		all = append(all, ports...)
	}
	if _, err := os.Stat(path + "." + strconv.Itoa(files)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s.%d exists (%v): want %d files at most", path, files, err, files)
	}
	// Oldest file first: the ports must run without a gap up to the last.
	if len(all) == 0 || all[len(all)-1] != 10000+n-1 {
		t.Fatalf("ports %v: want them to end with the last packet's %d", all, 10000+n-1)
	}
	for i := 1; i < len(all); i++ {
		if all[i] != all[i-1]+1 {
			t.Fatalf("ports %v: gap or reordering at %d", all, i)
		}
	}
	st := d.Stats()
	if st.Packets != n || st.Errors != 0 || st.Dropped != 0 {
		t.Errorf("stats %+v: want %d packets, no errors", st, n)
	}
	// 600-byte files hold 8 or 9 SYNs (56 and 76-byte records): 30
	// packets need at least 3 more files, and the oldest are gone.
	if st.Rotations < 3 || all[0] == 10000 {
		t.Errorf("stats %+v, oldest port kept %d: want at least 3 rotations and the oldest packets dropped", st, all[0])
	}
}

// TestDumpOneFile checks Files = 1 keeps only the current file.
func TestDumpOneFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.pcap")
	d, err := Open(Config{Path: path, MaxBytes: 200, Files: 1}, discard)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		d.WriteIP(time.Now(), syn(t, 2*i))
	}
	d.Close()
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Errorf("files %v: want only d.pcap", ents)
	}
	ports := synPorts(t, tcpdumpLines(t, path))
	if len(ports) == 0 || ports[len(ports)-1] != 10018 {
		t.Errorf("ports %v: want the newest packets", ports)
	}
}

// TestDumpLengths checks a packet truncated by the capture is recorded
// with its length on the wire, and link padding is left out.
func TestDumpLengths(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.pcap")
	d, err := Open(Config{Path: path}, discard)
	if err != nil {
		t.Fatal(err)
	}
	full := tcpPacket(t, "198.18.1.2:80", "198.19.0.7:4000", strings.Repeat("x", 1000))
	d.WriteIP(time.Now(), full[:96]) // a 96-byte snap
	padded := append(synPacket(t, netip.MustParseAddrPort("198.18.1.2:80"), netip.MustParseAddrPort("198.19.0.7:4000")), 0, 0, 0, 0, 0, 0)
	d.WriteIP(time.Now(), padded) // a 40-byte SYN in a minimum Ethernet frame
	v6 := tcpPacket(t, "[2001:2:0:1::2]:80", "[2001:2:0:ff::7]:4000", strings.Repeat("y", 500))
	d.WriteIP(time.Now(), v6[:80])
	d.Close()

	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	if r.LinkType() != layers.LinkTypeRaw {
		t.Errorf("link type %v, want RAW (101)", r.LinkType())
	}
	want := []struct{ capLen, origLen int }{{96, len(full)}, {40, 40}, {80, len(v6)}}
	for i, w := range want {
		data, ci, err := r.ReadPacketData()
		if err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
		if ci.CaptureLength != w.capLen || len(data) != w.capLen || ci.Length != w.origLen {
			t.Errorf("packet %d: captured %d of %d, want %d of %d", i, ci.CaptureLength, ci.Length, w.capLen, w.origLen)
		}
	}
	if _, _, err := r.ReadPacketData(); err != io.EOF {
		t.Errorf("after 3 packets: %v, want EOF", err)
	}
	lines := tcpdumpLines(t, path)
	if len(lines) != 3 || !strings.Contains(lines[0], "198.18.1.2.80 > 198.19.0.7.4000") {
		t.Errorf("tcpdump: %q", lines)
	}
}

// TestDumpReopen does what logrotate does: move the file away, then
// SIGHUP (Reopen). The daemon must start a new file at the path and leave
// the moved one complete; a Reopen with nothing moved goes on with the
// same file.
func TestDumpReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "copy.pcap")
	d, err := Open(Config{Path: path}, discard)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	d.WriteIP(time.Now(), syn(t, 0))
	if err := d.Reopen(); err != nil { // nothing moved
		t.Fatal(err)
	}
	d.WriteIP(time.Now(), syn(t, 1))
	if err := os.Rename(path, path+"-20250101"); err != nil {
		t.Fatal(err)
	}
	d.WriteIP(time.Now(), syn(t, 2)) // still into the moved file
	if err := d.Reopen(); err != nil {
		t.Fatal(err)
	}
	d.WriteIP(time.Now(), syn(t, 3))
	d.WriteIP(time.Now(), syn(t, 4))
	// logrotate's "create": an empty file put in place before the signal.
	if err := os.Rename(path, path+"-20250102"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.Reopen(); err != nil {
		t.Fatal(err)
	}
	d.WriteIP(time.Now(), syn(t, 5))
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string][]int{
		path + "-20250101": {10000, 10001, 10002},
		path + "-20250102": {10003, 10004},
		path:               {10005},
	} {
		if got := synPorts(t, tcpdumpLines(t, p)); !slices.Equal(got, want) {
			t.Errorf("%s: ports %v, want %v", p, got, want)
		}
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: %v, %v: want the mode logrotate created it with kept", path, fi.Mode(), err)
	}
	if _, err := os.Stat(path + ".1"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a reopen rotated by itself: %v", err)
	}
}

// TestDumpStartRotatesOld checks a restart never appends to the previous
// run's file, which may end in a torn record: it becomes FILE.1.
func TestDumpStartRotatesOld(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.pcap")
	for run := range 2 {
		d, err := Open(Config{Path: path}, discard)
		if err != nil {
			t.Fatal(err)
		}
		d.WriteIP(time.Now(), syn(t, run))
		d.Close()
	}
	if got := synPorts(t, tcpdumpLines(t, path+".1")); !slices.Equal(got, []int{10000}) {
		t.Errorf("previous run's file: %v", got)
	}
	if got := synPorts(t, tcpdumpLines(t, path)); !slices.Equal(got, []int{10001}) {
		t.Errorf("this run's file: %v", got)
	}
}

func TestDumpRefusesNonRegular(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{dir, "/dev/null"} {
		if d, err := Open(Config{Path: p}, discard); err == nil {
			d.Close()
			t.Errorf("OpenDump(%s) succeeded", p)
		}
	}
	if _, err := os.Stat("/dev/null.1"); err == nil {
		t.Fatal("/dev/null.1 exists")
	}
}

// TestDumpConcurrent writes from several goroutines while the dump
// rotates: every packet is in exactly one file (run with -race).
func TestDumpConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.pcap")
	const writers, each = 8, 300
	d, err := Open(Config{Path: path, MaxBytes: 4096, Files: 1000}, discard)
	if err != nil {
		t.Fatal(err)
	}
	pkts := make([][]byte, writers*each)
	for i := range pkts {
		pkts[i] = syn(t, i)
	}
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				d.WriteIP(time.Now(), pkts[w*each+i])
				if w == 0 && i%100 == 0 {
					_ = d.Reopen()
				}
			}
		}()
	}
	wg.Wait()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	seen := make(map[uint16]int)
	ents, _ := os.ReadDir(filepath.Dir(path))
	for _, e := range ents {
		f, err := os.Open(filepath.Join(filepath.Dir(path), e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		r, err := pcapgo.NewReader(f)
		if err != nil {
			t.Fatalf("%s: %v", e.Name(), err)
		}
		for {
			data, _, err := r.ReadPacketData()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", e.Name(), err)
			}
			var p rewrite.Packet
			if err := p.DecodeHeader(data); err != nil {
				t.Fatalf("%s: %v", e.Name(), err)
			}
			seen[p.TCP().SrcPort()]++
		}
		f.Close()
	}
	if len(seen) != writers*each {
		t.Errorf("%d distinct packets in %d files, want %d", len(seen), len(ents), writers*each)
	}
	for port, n := range seen {
		if n != 1 {
			t.Errorf("port %d dumped %d times", port, n)
		}
	}
	if st := d.Stats(); st.Packets != writers*each || st.Errors != 0 {
		t.Errorf("stats %+v", st)
	}
}

// failingFile fails writes past failAfter bytes.
type failingFile struct {
	*os.File
	mu        sync.Mutex
	written   int
	failAfter int
}

func (f *failingFile) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.written+len(p) > f.failAfter {
		// Like a full disk: what fits is written.
		n, _ := f.File.Write(p[:max(0, f.failAfter-f.written)])
		f.written += n
		return n, syscall.ENOSPC
	}
	f.written += len(p)
	return f.File.Write(p)
}

// lockedBuffer is a log destination safe for the flusher goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestDumpErrorsCounted fills the "disk": errors and lost packets are
// counted, never returned, logged once; after the retry delay the dump
// starts a fresh file and works again.
func TestDumpErrorsCounted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.pcap")
	var logs lockedBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	var mu sync.Mutex
	full := true
	create := func(p string) (file, error) {
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
		if err != nil {
			return nil, err
		}
		mu.Lock()
		defer mu.Unlock()
		if full {
			// The header and a few records fit; the 64 KiB buffer
			// flush after them does not.
			return &failingFile{File: f, failAfter: 1000}, nil
		}
		return f, nil
	}
	d, err := open(Config{Path: path}, log, create)
	if err != nil {
		t.Fatal(err)
	}
	big := tcpPacket(t, "198.18.0.2:1", "198.18.1.2:80", strings.Repeat("z", 1400))
	for range 200 { // 290 KB: several buffer flushes
		d.WriteIP(time.Now(), big)
	}
	st := d.Stats()
	if st.Errors == 0 || st.Dropped == 0 {
		t.Fatalf("stats %+v: want errors and dropped packets counted", st)
	}
	if n := strings.Count(logs.String(), "dump failed"); n != 1 {
		t.Errorf("%d failure logs, want 1:\n%s", n, logs.String())
	}

	mu.Lock()
	full = false
	mu.Unlock()
	d.mu.Lock()
	d.retryAt = time.Time{} // the retry delay has passed
	d.mu.Unlock()
	before := d.Stats().Packets
	d.WriteIP(time.Now(), syn(t, 0))
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if got := d.Stats().Packets; got != before+1 {
		t.Errorf("packets %d after recovery, want %d", got, before+1)
	}
	if !strings.Contains(logs.String(), "dumping again") {
		t.Errorf("recovery not logged:\n%s", logs.String())
	}
	if got := synPorts(t, tcpdumpLines(t, path)); !slices.Equal(got, []int{10000}) {
		t.Errorf("fresh file after recovery: %v", got)
	}
	if _, err := os.Stat(path + ".1"); err != nil {
		t.Errorf("the broken file was not rotated away: %v", err)
	}
}

// sliceSource returns pkts in order, stamped 1700000000+i seconds.
type sliceSource struct {
	pkts [][]byte
	next int
}

func (s *sliceSource) Read() ([]byte, time.Time, error) {
	if s.next == len(s.pkts) {
		return nil, time.Time{}, io.EOF
	}
	s.next++
	return s.pkts[s.next-1], time.Unix(1700000000+int64(s.next-1), 0), nil
}

func (s *sliceSource) Stats() capture.Stats { return capture.Stats{Read: uint64(s.next)} }
func (s *sliceSource) Close() error         { return nil }

// TestTee checks a teed source returns what it reads, unchanged, and
// dumps it.
func TestTee(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.pcap")
	d, err := Open(Config{Path: path}, discard)
	if err != nil {
		t.Fatal(err)
	}
	src := &sliceSource{}
	for i := range 3 {
		src.pkts = append(src.pkts, syn(t, i))
	}
	tee := Tee(src, d)
	for i := range 3 {
		pkt, ts, err := tee.Read()
		if err != nil || !bytes.Equal(pkt, syn(t, i)) || ts.Unix() != 1700000000+int64(i) {
			t.Fatalf("read %d: %v, %v, equal %v", i, err, ts, bytes.Equal(pkt, syn(t, i)))
		}
	}
	if _, _, err := tee.Read(); err != io.EOF {
		t.Fatalf("after the last packet: %v, want EOF", err)
	}
	if tee.Stats().Read != 3 {
		t.Error("Stats not passed through")
	}
	d.Close()
	if got := synPorts(t, tcpdumpLines(t, path)); !slices.Equal(got, []int{10000, 10001, 10002}) {
		t.Errorf("dumped ports %v", got)
	}
}

// TestDumpWriteAllocs checks dumping a packet allocates nothing: it is
// per packet when on.
func TestDumpWriteAllocs(t *testing.T) {
	d, err := Open(Config{Path: filepath.Join(t.TempDir(), "d.pcap")}, discard)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	pkt := syn(t, 0)
	now := time.Now()
	if n := testing.AllocsPerRun(1000, func() { d.WriteIP(now, pkt) }); n != 0 {
		t.Errorf("%v allocations per packet, want 0", n)
	}
}

func BenchmarkDumpWriteIP(b *testing.B) {
	for _, size := range []int{60, 1500} {
		b.Run(strconv.Itoa(size), func(b *testing.B) {
			d, err := Open(Config{Path: filepath.Join(b.TempDir(), "d.pcap"), MaxBytes: 16 << 20, Files: 2}, discard)
			if err != nil {
				b.Fatal(err)
			}
			defer d.Close()
			seg := rewrite.Segment{
				Src: netip.MustParseAddrPort("198.18.0.2:1"), Dst: netip.MustParseAddrPort("198.18.1.2:80"),
				Flags: rewrite.FlagACK, Payload: make([]byte, size-40),
			}
			pkt := make([]byte, seg.Len())
			if _, err := seg.Put(pkt); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(pkt)))
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					d.WriteIP(time.Now(), pkt)
				}
			})
		})
	}
}

// TestDumpNoSymlinkFollowed: a link at the dump's path is neither written
// through nor rotated; an empty file there is replaced by a new one of
// mode 0600.
func TestDumpNoSymlinkFollowed(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "shadow")
	if err := os.WriteFile(target, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "copy.pcap")
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
	if d, err := Open(Config{Path: p}, slog.New(slog.DiscardHandler)); err == nil {
		d.Close()
		t.Fatal("Open took a symbolic link")
	}
	if b, _ := os.ReadFile(target); string(b) != "keep" {
		t.Fatalf("the link's target was written: %q", b)
	}
	os.Remove(p)
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	d, err := Open(Config{Path: p}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if fi, err := os.Lstat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("dump file %v, %v: want a new file of mode 0600", fi, err)
	}
	// A link planted while it runs is refused at the reopen.
	os.Rename(p, p+".moved")
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
	if err := d.Reopen(); err == nil {
		t.Fatal("Reopen took a symbolic link")
	}
	d.WriteIP(time.Now(), make([]byte, 40))
	if b, _ := os.ReadFile(target); string(b) != "keep" {
		t.Fatalf("the link's target was written: %q", b)
	}
}
