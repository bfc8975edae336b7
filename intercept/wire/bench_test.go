package wire

import (
	"bytes"
	"testing"
)

// BenchmarkReplyBatch fills a batch with 64 records of 52-byte headers (an
// IPv4 header and a TCP header with timestamps) and takes the frame.
func BenchmarkReplyBatch(b *testing.B) {
	var rb ReplyBatch
	hdr := testHeader(52, 1)
	b.ReportAllocs()
	b.SetBytes(int64(len(replyFrame(64, 52))))
	for i := 0; b.Loop(); i++ {
		rb.Reset()
		for j := range 64 {
			rb.Add(int64(i+j), hdr)
		}
		if rb.Frame() == nil {
			b.Fatal("empty")
		}
	}
}

// BenchmarkReaderReplies reads such frames from a stream and walks their
// records.
func BenchmarkReaderReplies(b *testing.B) {
	fr := replyFrame(64, 52)
	r := NewReader(&loopReader{b: bytes.Repeat(fr, 100)})
	var sum int64
	fn := func(ts int64, hdr []byte) { sum += ts + int64(hdr[0]) }
	b.ReportAllocs()
	b.SetBytes(int64(len(fr)))
	for b.Loop() {
		typ, p, err := r.Next()
		if err != nil || typ != TypeReplies {
			b.Fatal(typ, err)
		}
		if n, err := ForEachReply(p, fn); n != 64 || err != nil {
			b.Fatal(n, err)
		}
	}
}

func BenchmarkFlowBatch(b *testing.B) {
	var fb FlowBatch
	b.ReportAllocs()
	for b.Loop() {
		fb.Reset(TypeRegister)
		for range 32 {
			fb.Add(flow4)
			fb.Add(flow6)
		}
		if fb.Frame() == nil {
			b.Fatal("empty")
		}
	}
}

// BenchmarkReplyBatchSealed is BenchmarkReplyBatch plus the tag a plain-TCP
// session adds to every frame.
func BenchmarkReplyBatchSealed(b *testing.B) {
	seal, _ := sealedPair(b)
	var rb ReplyBatch
	hdr := testHeader(52, 1)
	b.ReportAllocs()
	b.SetBytes(int64(len(replyFrame(64, 52))))
	for i := 0; b.Loop(); i++ {
		rb.Reset()
		for j := range 64 {
			rb.Add(int64(i+j), hdr)
		}
		if seal.Seal(rb.Frame()) == nil {
			b.Fatal("empty")
		}
	}
}

// BenchmarkReaderRepliesSealed is BenchmarkReaderReplies on a sealed
// stream: each frame's tag is checked.
func BenchmarkReaderRepliesSealed(b *testing.B) {
	seal, open := sealedPair(b)
	fr := replyFrame(64, 52)
	// Sealed frames cannot be replayed: seal as many as the loop reads.
	var stream []byte
	for range 1 << 14 {
		stream = append(stream, seal.Seal(bytes.Clone(fr))...)
	}
	var sum int64
	fn := func(ts int64, hdr []byte) { sum += ts + int64(hdr[0]) }
	b.ReportAllocs()
	b.SetBytes(int64(len(fr)))
	var r *Reader
	n := 0
	for b.Loop() {
		if n%(1<<14) == 0 {
			_, open = sealedPair(b)
			r = NewReader(bytes.NewReader(stream))
			r.SetOpener(open)
		}
		n++
		typ, p, err := r.Next()
		if err != nil || typ != TypeReplies {
			b.Fatal(typ, err)
		}
		if n, err := ForEachReply(p, fn); n != 64 || err != nil {
			b.Fatal(n, err)
		}
	}
}
