package record

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/pcapfile"
)

// packet is an IPv4 TCP packet of n bytes whose byte 20 is mark and
// whose header declares wire bytes.
func packet(n, wire int, mark byte) []byte {
	b := make([]byte, n)
	b[0], b[9] = 0x45, 6
	b[2], b[3] = byte(wire>>8), byte(wire)
	b[20] = mark
	return b
}

type readBack struct {
	ts   int64
	mark byte
	n    int
	orig int
}

// files returns the completed files in dir, in name order, and fails on
// a .part left behind.
func files(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), partSuffix) {
			t.Errorf("%s left behind", e.Name())
		}
		if strings.HasSuffix(e.Name(), fileSuffix) {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	slices.Sort(out)
	return out
}

func readFile(t *testing.T, path string) []readBack {
	t.Helper()
	f, err := pcapfile.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []readBack
	for {
		rec, err := f.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if rec.Link != pcapfile.LinkRaw {
			t.Fatalf("%s: link %v", path, rec.Link)
		}
		out = append(out, readBack{ts: rec.Time, mark: rec.Frame[20], n: len(rec.Frame), orig: rec.OrigLen})
	}
}

// TestRotateBySize: files are closed at the size bound, named in time
// order, the oldest removed beyond MaxFiles, and every packet written
// once, merged from two taps in time order, a cut one with its wire
// length.
func TestRotateBySize(t *testing.T) {
	dir := t.TempDir()
	// An earlier run's file counts against the bound.
	old := filepath.Join(dir, filePrefix+"20000101T000000.000Z-000001"+fileSuffix)
	os.WriteFile(old, nil, 0o600)
	r, err := Open(Config{Dir: dir, MaxBytes: MinBytes, MaxFiles: 3}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	client, prod := r.Tap(), r.Tap()
	const n, size = 6000, 1000 // 3.4 MB: four files; the queues hold it all
	base := time.Unix(1764669600, 0)
	for i := range n {
		tap, pkt := client, packet(size, size, byte(i))
		if i%2 == 1 {
			tap, pkt = prod, packet(100, 1500, byte(i)) // cut after its headers
		}
		tap.Write(base.Add(time.Duration(i)*time.Millisecond), pkt)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	st := r.Stats()
	if st.Dropped != 0 || st.Errors != 0 || st.Packets != n {
		t.Fatalf("stats %+v: want %d packets, no drops, no errors", st, n)
	}
	got := files(t, dir)
	if len(got) != 3 || slices.Contains(got, old) || st.Removed != 2 {
		t.Fatalf("files %v, removed %d: want the 3 newest of 5 (4 of this run and the old one)", got, st.Removed)
	}
	if st.Rotations != 3 || st.Files != 4 {
		t.Errorf("rotations %d files %d, want 3 and 4", st.Rotations, st.Files)
	}
	var all []readBack
	for _, f := range got {
		fi, _ := os.Stat(f)
		if fi.Size() > MinBytes {
			t.Errorf("%s: %d bytes, past the bound", f, fi.Size())
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v", f, fi.Mode())
		}
		all = append(all, readFile(t, f)...)
	}
	// The files kept hold the last packets, in order, none twice.
	first := n - len(all)
	for j, rb := range all {
		i := first + j
		want := readBack{ts: base.Add(time.Duration(i) * time.Millisecond).UnixNano(), mark: byte(i), n: size, orig: size}
		if i%2 == 1 {
			want.n, want.orig = 100, 1500
		}
		if rb != want {
			t.Fatalf("record %d: %+v, want %+v", i, rb, want)
		}
	}
}

func TestRotateByAge(t *testing.T) {
	dir := t.TempDir()
	r, err := Open(Config{Dir: dir, MaxAge: time.Second}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	tap := r.Tap()
	tap.Write(time.Now(), packet(60, 60, 1))
	time.Sleep(1500 * time.Millisecond) // past the file's age bound
	tap.Write(time.Now(), packet(60, 60, 2))
	r.Close()
	got := files(t, dir)
	if len(got) != 2 || len(readFile(t, got[0])) != 1 || len(readFile(t, got[1])) != 1 {
		t.Fatalf("files %v: want two of one packet each", got)
	}
}

func TestTapBounded(t *testing.T) {
	tp := newTap(minTapBytes)
	pkt := packet(1000, 1000, 7)
	put := 0
	for tp.put(int64(put), pkt, 1000) {
		put++
	}
	if put != minTapBytes/int(recLen(1000)) || tp.dropped.Load() != 1 {
		t.Fatalf("queued %d before the first drop (dropped %d), want %d", put, tp.dropped.Load(), minTapBytes/int(recLen(1000)))
	}
	// Drained in order, then it takes more: across the arena's end too.
	for i := range 3 * put {
		if i >= put {
			if !tp.put(int64(i), pkt[:500+i%300], 1000) {
				t.Fatalf("put %d refused with room", i)
			}
		}
		ts, b, _, ok := tp.peek()
		if !ok || ts != int64(i) || b[20] != 7 {
			t.Fatalf("record %d: ts %d ok %v", i, ts, ok)
		}
		tp.take()
	}
	if _, _, _, ok := tp.peek(); ok {
		t.Fatal("records left")
	}
	if tp.put(0, make([]byte, minTapBytes), 0) || tp.dropped.Load() != 2 {
		t.Fatal("a packet larger than half the queue was taken")
	}
	if n := testing.AllocsPerRun(1000, func() {
		tp.put(1, pkt, 1000)
		tp.peek()
		tp.take()
	}); n != 0 {
		t.Errorf("put allocates %v times", n)
	}
}

func TestValidate(t *testing.T) {
	def := DefaultConfig()
	if err := def.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for _, c := range []Config{
		{MaxBytes: 1000, MaxFiles: 1, QueueBytes: minTapBytes},
		{MaxBytes: MinBytes, MaxFiles: 0, QueueBytes: minTapBytes},
		{MaxBytes: MinBytes, MaxFiles: 1, QueueBytes: 10},
		{MaxBytes: MinBytes, MaxFiles: 1, QueueBytes: minTapBytes, MaxAge: time.Millisecond},
		{MaxBytes: MinBytes, MaxFiles: 1, QueueBytes: minTapBytes, Dir: "/nonexistent/dir"},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v: valid", c)
		}
	}
}
