package wire

import (
	"bytes"
	"testing"

	"github.com/tcpshadow/tcpshadow/rewrite"
)

// loopReader replays b forever.
type loopReader struct {
	b   []byte
	off int
}

func (l *loopReader) Read(p []byte) (int, error) {
	n := copy(p, l.b[l.off:])
	l.off = (l.off + n) % len(l.b)
	return n, nil
}

// replyFrame returns a Replies frame of n records with hlen-byte headers.
func replyFrame(n, hlen int) []byte {
	var b ReplyBatch
	hdr := testHeader(hlen, 9)
	for i := range n {
		b.Add(int64(i), hdr)
	}
	return bytes.Clone(b.Frame())
}

func zeroAllocs(t *testing.T, name string, f func()) {
	t.Helper()
	if n := testing.AllocsPerRun(1000, f); n != 0 {
		t.Errorf("%s: %v allocations per run, want 0", name, n)
	}
}

func TestZeroAllocs(t *testing.T) {
	// Reader.Next over a stream mixing small frames with one larger than
	// the read buffer; the first pass grows the buffers.
	stream := bytes.Join([][]byte{
		replyFrame(64, 52),
		AppendPing(nil, 1),
		AppendFlows(nil, TypeRegister, []rewrite.Tuple{flow4, flow6}),
		replyFrame(MaxRepliesPerFrame, MaxReplyHeader),
		replyFrame(MaxRepliesPerFrame, MaxReplyLen), // headers and the largest prefix
		frameOf(77, nil),
	}, nil)
	r := NewReader(&loopReader{b: stream})
	for range 10 {
		if _, _, err := r.Next(); err != nil {
			t.Fatal(err)
		}
	}
	zeroAllocs(t, "Reader.Next", func() {
		if _, _, err := r.Next(); err != nil {
			t.Fatal(err)
		}
	})

	var rb ReplyBatch
	hdr := testHeader(52, 1)
	withPrefix := testHeader(52+64, 2) // headers and a 64-byte prefix
	fillReplies := func() {
		rb.Reset()
		for i := range 64 {
			rb.Add(int64(i), hdr)
			rb.Add(int64(i), withPrefix)
		}
		if rb.Len() != 128 || rb.Frame() == nil {
			t.Fatal("batch not filled")
		}
	}
	fillReplies()
	zeroAllocs(t, "ReplyBatch Reset+Add+Frame", fillReplies)

	var fb FlowBatch
	fillFlows := func() {
		fb.Reset(TypeRegister)
		for range 20 {
			fb.Add(flow4)
			fb.Add(flow6)
		}
		if fb.Frame() == nil {
			t.Fatal("empty frame")
		}
	}
	fillFlows()
	zeroAllocs(t, "FlowBatch Reset+Add+Frame", fillFlows)

	replies := replyFrame(64, 52+64)[frameHeader:]
	zeroAllocs(t, "ForEachReply", func() {
		var sum int
		n, err := ForEachReply(replies, func(ts int64, hdr []byte) { sum += len(hdr) + int(ts) })
		if n != 64 || err != nil || sum == 0 {
			t.Fatal(n, err)
		}
	})
	flows := AppendFlows(nil, TypeRegister, []rewrite.Tuple{flow4, flow6, flow6b})[frameHeader:]
	zeroAllocs(t, "ForEachFlow", func() {
		var ports int
		n, err := ForEachFlow(flows, func(t rewrite.Tuple) { ports += int(t.SrcPort) })
		if n != 3 || err != nil || ports == 0 {
			t.Fatal(n, err)
		}
	})
	zeroAllocs(t, "Validate", func() {
		if Validate(TypeReplies, replies) != nil || Validate(TypeRegister, flows) != nil {
			t.Fatal("invalid")
		}
	})

	buf := make([]byte, 0, 4096)
	h := Hello{Version: Version, Role: RoleCopier, Name: "prod-1", Pools: []Pool{pool4, pool6}}
	fs := []rewrite.Tuple{flow4, flow6}
	mac := nonce(1)
	zeroAllocs(t, "AppendPing", func() { buf = AppendPing(buf[:0], 7) })
	zeroAllocs(t, "AppendPong", func() { buf = AppendPong(buf[:0], 7) })
	zeroAllocs(t, "AppendHello", func() { buf = AppendHello(buf[:0], &h) })
	zeroAllocs(t, "AppendAuth", func() { buf = AppendAuth(buf[:0], mac, "agent-1") })
	zeroAllocs(t, "AppendError", func() { buf = AppendError(buf[:0], CodeOverload, "busy") })
	zeroAllocs(t, "AppendFlows", func() { buf = AppendFlows(buf[:0], TypeDeregister, fs) })
}
