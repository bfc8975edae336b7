package wire

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"runtime"
	"testing"
	"testing/iotest"
)

// frameOf builds a frame with an arbitrary type and payload.
func frameOf(typ MsgType, payload []byte) []byte {
	return append(appendFrameHeader(nil, typ, len(payload)), payload...)
}

// sampleFrames returns every sample encoded, plus frames the samples lack:
// an unknown type, one larger than the Reader's buffer and one exactly
// MaxFrameLen long.
func sampleFrames(tb testing.TB, withHuge bool) [][]byte {
	var fs [][]byte
	for _, s := range samples() {
		fs = append(fs, encode(tb, s.typ, s.val))
	}
	fs = append(fs, frameOf(42, []byte("unknown")), frameOf(9, nil))
	if withHuge {
		fs = append(fs, frameOf(200, testHeader(MaxFrameLen-1, 5)))
	}
	return fs
}

type frame struct {
	typ MsgType
	p   []byte
}

// readAll reads frames until an error, copying payloads.
func readAll(r *Reader) ([]frame, error) {
	var got []frame
	for {
		typ, p, err := r.Next()
		if err != nil {
			return got, err
		}
		if len(p) > MaxFrameLen-1 {
			panic("payload above MaxFrameLen")
		}
		got = append(got, frame{typ, bytes.Clone(p)})
	}
}

func checkFrames(t *testing.T, got []frame, want [][]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("read %d frames, want %d", len(got), len(want))
	}
	for i, f := range got {
		if MsgType(want[i][4]) != f.typ || !bytes.Equal(want[i][frameHeader:], f.p) {
			t.Fatalf("frame %d: type %v, %d bytes; want type %v, %d bytes", i, f.typ, len(f.p), MsgType(want[i][4]), len(want[i])-frameHeader)
		}
	}
}

// TestReaderStream reads all sample frames back to back through readers
// that return short reads.
func TestReaderStream(t *testing.T) {
	frames := sampleFrames(t, true)
	stream := bytes.Join(frames, nil)
	for name, wrap := range map[string]func(io.Reader) io.Reader{
		"whole":     func(r io.Reader) io.Reader { return r },
		"onebyte":   iotest.OneByteReader,
		"half":      iotest.HalfReader,
		"dataeof":   iotest.DataErrReader,
		"chunk3000": func(r io.Reader) io.Reader { return &chunkReader{r: r, n: 3000} },
	} {
		t.Run(name, func(t *testing.T) {
			if name == "onebyte" && testing.Short() {
				t.Skip("slow")
			}
			r := NewReader(wrap(bytes.NewReader(stream)))
			got, err := readAll(r)
			if err != io.EOF {
				t.Fatalf("stream ended with %v, want io.EOF", err)
			}
			checkFrames(t, got, frames)
			if _, _, err := r.Next(); err != io.EOF {
				t.Fatalf("Next after EOF: %v", err)
			}
		})
	}
}

// chunkReader returns at most n bytes per Read.
type chunkReader struct {
	r io.Reader
	n int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(p) > c.n {
		p = p[:c.n]
	}
	return c.r.Read(p)
}

// TestReaderTruncated cuts a stream of frames at every byte: the frames
// before the cut are read intact, then io.EOF at a frame boundary or
// io.ErrUnexpectedEOF within a frame.
func TestReaderTruncated(t *testing.T) {
	frames := sampleFrames(t, false)
	var small [][]byte // frames that fit the Reader's buffer, cut at every byte
	var large [][]byte // the others, cut at sampled points
	for _, f := range frames {
		if len(f) <= readBufSize {
			small = append(small, f)
		} else {
			large = append(large, f)
		}
	}
	large = append(large, frameOf(200, testHeader(MaxFrameLen-1, 5)))
	stream := bytes.Join(small, nil)
	var bounds []int // stream offsets where a frame ends
	for i, off := 0, 0; i < len(small); i++ {
		off += len(small[i])
		bounds = append(bounds, off)
	}
	for k := 0; k < len(stream); k++ {
		whole := 0
		for whole < len(bounds) && bounds[whole] <= k {
			whole++
		}
		want := io.ErrUnexpectedEOF
		if k == 0 || (whole > 0 && bounds[whole-1] == k) {
			want = io.EOF
		}
		got, err := readAll(NewReader(bytes.NewReader(stream[:k])))
		if err != want {
			t.Fatalf("cut at %d: %v, want %v", k, err, want)
		}
		checkFrames(t, got, small[:whole])
	}
	for _, f := range large {
		for _, k := range []int{1, 3, 4, 5, 6, readBufSize - 1, readBufSize, readBufSize + 1, len(f) / 2, len(f) - 1} {
			if k >= len(f) {
				continue
			}
			if _, _, err := NewReader(bytes.NewReader(f[:k])).Next(); err != io.ErrUnexpectedEOF {
				t.Fatalf("large frame of %d cut at %d: %v", len(f), k, err)
			}
		}
	}
}

func TestReaderLengthPrefix(t *testing.T) {
	tests := []struct {
		name   string
		stream []byte
		want   error
	}{
		{"zero", []byte{0, 0, 0, 0, 7, 1, 2}, ErrMalformed},
		{"max+1", append([]byte{0, 0x10, 0, 1}, make([]byte, 100)...), ErrFrameTooLarge},
		{"all ones", []byte{0xff, 0xff, 0xff, 0xff, 7}, ErrFrameTooLarge},
		{"after a good frame", append(AppendPing(nil, 1), 0x80, 0, 0, 0), ErrFrameTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewReader(bytes.NewReader(tt.stream))
			_, err := readAll(r)
			if !errors.Is(err, tt.want) {
				t.Fatalf("%v, want %v", err, tt.want)
			}
			// Errors are sticky: the position in the stream is lost.
			if _, _, err2 := r.Next(); err2 != err {
				t.Fatalf("second Next: %v, want %v again", err2, err)
			}
		})
	}
}

// allocatedBy returns the bytes allocated while running f.
func allocatedBy(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

func TestReaderHugeLengthDoesNotAllocate(t *testing.T) {
	tests := []struct {
		name   string
		stream []byte
		want   error
	}{
		// Rejected from the prefix alone.
		{"0xffffffff", append([]byte{0xff, 0xff, 0xff, 0xff}, make([]byte, 1000)...), ErrFrameTooLarge},
		// Accepted, but only 1000 bytes follow: the buffer grows with the
		// data, not with the prefix.
		{"MaxFrameLen", append(be.AppendUint32(nil, MaxFrameLen), make([]byte, 1000)...), io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			n := allocatedBy(func() {
				_, _, err = NewReader(bytes.NewReader(tt.stream)).Next()
			})
			if !errors.Is(err, tt.want) {
				t.Fatalf("%v, want %v", err, tt.want)
			}
			if n >= 1<<20 {
				t.Fatalf("allocated %d bytes", n)
			}
			t.Logf("allocated %d bytes", n)
		})
	}
}

func TestReaderUnderlyingError(t *testing.T) {
	// At a boundary and within a frame, a read error is passed on, wrapped.
	for _, stream := range [][]byte{nil, AppendPing(nil, 1)[:6]} {
		r := NewReader(io.MultiReader(bytes.NewReader(stream), iotest.ErrReader(iotest.ErrTimeout)))
		_, _, err := r.Next()
		if !errors.Is(err, iotest.ErrTimeout) || err.Error() != "read frame: timeout" {
			t.Fatalf("%d bytes then timeout: %v", len(stream), err)
		}
	}
	// Also in the middle of a frame larger than the read buffer.
	f := frameOf(TypeRegister, make([]byte, 2*readBufSize))
	r := NewReader(io.MultiReader(bytes.NewReader(f[:readBufSize+100]), iotest.ErrReader(iotest.ErrTimeout)))
	if _, _, err := r.Next(); !errors.Is(err, iotest.ErrTimeout) {
		t.Fatalf("large frame then timeout: %v", err)
	}
}

// TestReaderLargeThenSmall checks that the assembly buffer of large frames
// and the in-place path alternate correctly, including a large frame that
// must grow the buffer a second time.
func TestReaderLargeThenSmall(t *testing.T) {
	frames := [][]byte{
		frameOf(1, testHeader(readBufSize, 1)), // just over the buffer with the prefix
		AppendPing(nil, 1),
		frameOf(2, testHeader(3*readBufSize, 2)),
		frameOf(3, testHeader(readBufSize-frameHeader, 3)), // exactly fills the buffer
		frameOf(4, testHeader(minLargeBuf+10, 4)),
		AppendPong(nil, 2),
	}
	got, err := readAll(NewReader(iotest.HalfReader(bytes.NewReader(bytes.Join(frames, nil)))))
	if err != io.EOF {
		t.Fatal(err)
	}
	checkFrames(t, got, frames)
}

// TestGarbage feeds random streams to the Reader and every payload and
// random bytes to every parser: errors, never a panic, and the parsers
// agree with Validate.
func TestGarbage(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 20000 {
		buf := make([]byte, rng.IntN(300))
		for j := range buf {
			buf[j] = byte(rng.Uint32())
		}
		// Small length prefixes now and then, so that frames get parsed.
		if len(buf) > 4 && i%2 == 0 {
			be.PutUint32(buf, uint32(rng.IntN(len(buf))))
			buf[4] = byte(rng.IntN(10))
		}
		r := NewReader(bytes.NewReader(buf))
		for {
			typ, p, err := r.Next()
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) &&
					!errors.Is(err, ErrMalformed) && !errors.Is(err, ErrFrameTooLarge) {
					t.Fatalf("Next: unexpected error %v", err)
				}
				break
			}
			checkParsers(t, typ, p)
		}
		for typ := range MsgType(10) {
			checkParsers(t, typ, buf)
		}
	}
}

func checkParsers(t testing.TB, typ MsgType, p []byte) {
	t.Helper()
	_, err := parse(typ, p)
	verr := Validate(typ, p)
	if (err == nil) != (verr == nil) {
		t.Fatalf("%v %x: parse says %v, Validate says %v", typ, p, err, verr)
	}
	if err != nil && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrBadMagic) && !errors.Is(err, ErrUnknownType) {
		t.Fatalf("%v: unexpected error %v", typ, err)
	}
}
