package wire

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// sealedPair returns the copier's Sealer and the agent's Opener of one
// session, and a copier Opener for the other direction's keys.
func sealedPair(t testing.TB) (*Sealer, *Opener) {
	t.Helper()
	tr := Transcript([]byte("copier"), []byte("agent"), nil)
	seal, _, err := SessionKeys([]byte("0123456789abcdef"), tr, RoleCopier)
	if err != nil {
		t.Fatal(err)
	}
	_, open, err := SessionKeys([]byte("0123456789abcdef"), tr, RoleAgent)
	if err != nil {
		t.Fatal(err)
	}
	return seal, open
}

func TestSessionRoundTrip(t *testing.T) {
	seal, _ := sealedPair(t)
	var stream []byte
	var want [][]byte
	for _, s := range samples() {
		f := encode(t, s.typ, s.val)
		want = append(want, bytes.Clone(f))
		stream = append(stream, seal.Seal(f)...)
	}
	for name, wrap := range map[string]func(io.Reader) io.Reader{
		"whole": func(r io.Reader) io.Reader { return r },
		"half":  iotest.HalfReader,
	} {
		t.Run(name, func(t *testing.T) {
			_, open := sealedPair(t)
			r := NewReader(wrap(bytes.NewReader(stream)))
			r.SetOpener(open)
			got, err := readAll(r)
			if err != io.EOF {
				t.Fatalf("sealed stream ended with %v", err)
			}
			checkFrames(t, got, want)
		})
	}
}

// TestSessionRejects: a frame that is forged, replayed, reordered, cut,
// from the other direction or from another session fails with ErrBadMAC,
// which is not sticky: the genuine frames around it are read, in order.
func TestSessionRejects(t *testing.T) {
	seal, _ := sealedPair(t)
	f1 := seal.Seal(AppendPing(nil, 1))
	f2 := seal.Seal(AppendPing(nil, 2))
	f3 := seal.Seal(AppendPing(nil, 3))
	other, _ := sealedPair(t) // same keys, its own counter: a replay of index 0
	replay := other.Seal(AppendPing(nil, 9))
	agentSeal, _, _ := SessionKeys([]byte("0123456789abcdef"), Transcript([]byte("copier"), []byte("agent"), nil), RoleAgent)
	fromAgent := agentSeal.Seal(AppendPing(nil, 7))
	otherSession, _, _ := SessionKeys([]byte("0123456789abcdef"), Transcript([]byte("copier2"), []byte("agent"), nil), RoleCopier)
	foreign := otherSession.Seal(AppendPing(nil, 8))
	flipped := bytes.Clone(f2)
	flipped[6] ^= 1
	for name, inject := range map[string][]byte{
		"unsealed":      AppendPing(nil, 5),
		"tag only":      append(be.AppendUint32(nil, TagLen), make([]byte, TagLen)...),
		"short":         {0, 0, 0, 1, byte(TypePing)},
		"replayed":      f1,
		"reordered":     f3,
		"other session": foreign,
		"agent's":       fromAgent,
		"flipped":       flipped,
		"replay 0":      replay,
	} {
		t.Run(name, func(t *testing.T) {
			_, open := sealedPair(t)
			stream := bytes.Join([][]byte{f1, inject, f2, f3}, nil)
			r := NewReader(bytes.NewReader(stream))
			r.SetOpener(open)
			var toks []uint64
			bad := 0
			for {
				typ, p, err := r.Next()
				if errors.Is(err, ErrBadMAC) {
					bad++
					continue
				}
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("Next: %v", err)
				}
				if typ != TypePing {
					t.Fatalf("frame of type %v", typ)
				}
				tok, _ := ParsePing(p)
				toks = append(toks, tok)
			}
			if bad != 1 || len(toks) != 3 || toks[0] != 1 || toks[1] != 2 || toks[2] != 3 {
				t.Fatalf("%d frames refused, tokens %v; want 1 refused and 1 2 3", bad, toks)
			}
		})
	}
}

// TestHandshakeReader: a handshake Reader refuses any frame longer than
// the largest handshake message from its prefix alone, holds only its
// small buffer, and after Resize reads large frames, keeping what it had
// buffered.
func TestHandshakeReader(t *testing.T) {
	var err error
	n := allocatedBy(func() {
		stream := append(be.AppendUint32(nil, MaxHandshakeFrameLen+1), make([]byte, 4000)...)
		_, _, err = NewHandshakeReader(bytes.NewReader(stream)).Next()
	})
	if !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("frame over the handshake limit: %v", err)
	}
	if n > 8<<10 {
		t.Fatalf("a handshake Reader allocated %d bytes refusing one frame", n)
	}
	hello := AppendHello(nil, &Hello{Version: Version, Role: RoleCopier, Name: "n", Pools: maxPools()})
	errFrame := AppendError(nil, CodeProtocol, string(bytes.Repeat([]byte("e"), MaxErrorMsgLen)))
	auth := AppendAuth(nil, nonce(1), string(bytes.Repeat([]byte("a"), MaxNameLen)))
	big := frameOf(TypeRegister, make([]byte, 3*readBufSize))
	stream := bytes.Join([][]byte{hello, errFrame, auth, AppendPing(nil, 4), big}, nil)
	r := NewHandshakeReader(iotest.HalfReader(bytes.NewReader(stream)))
	got := []frame{}
	for range 3 {
		typ, p, err := r.Next()
		if err != nil {
			t.Fatalf("handshake frame: %v", err)
		}
		got = append(got, frame{typ, bytes.Clone(p)})
	}
	checkFrames(t, got, [][]byte{hello, errFrame, auth})
	r.Resize(readBufSize, MaxFrameLen)
	rest, err := readAll(r)
	if err != io.EOF {
		t.Fatal(err)
	}
	checkFrames(t, rest, [][]byte{AppendPing(nil, 4), big})
}

func TestSealedZeroAllocs(t *testing.T) {
	seal, open := sealedPair(t)
	var rb ReplyBatch
	hdr := testHeader(52, 1)
	fill := func() []byte {
		rb.Reset()
		for i := range 64 {
			rb.Add(int64(i), hdr)
		}
		return seal.Seal(rb.Frame())
	}
	// Sealed frames cannot be replayed: seal a run for the reads below.
	var run []byte
	for range 2000 {
		run = append(run, fill()...)
	}
	zeroAllocs(t, "ReplyBatch+Seal", func() { fill() })
	r := NewReader(bytes.NewReader(run))
	r.SetOpener(open)
	zeroAllocs(t, "sealed Reader.Next+ForEachReply", func() {
		typ, p, err := r.Next()
		if err != nil || typ != TypeReplies {
			t.Fatal(typ, err)
		}
		if n, err := ForEachReply(p, func(int64, []byte) {}); n != 64 || err != nil {
			t.Fatal(n, err)
		}
	})
}
