package wire

import (
	"bufio"
	"errors"
	"fmt"
	"io"
)

const (
	readBufSize = 64 << 10 // the Reader's bufio buffer
	minLargeBuf = 64 << 10 // first allocation for a frame that does not fit readBufSize
)

// Reader splits a byte stream into frames. It is not safe for concurrent
// use; one goroutine reads a connection.
//
// Frames that fit its 64 KiB read buffer are returned in place, without a
// copy; larger ones are assembled in a second buffer that grows as their
// bytes arrive, never beyond MaxFrameLen, so a length prefix alone cannot
// make the Reader allocate. Both buffers are reused: Next allocates nothing
// in steady state.
type Reader struct {
	br      *bufio.Reader
	discard int    // bytes of the last frame still in br
	large   []byte // assembly buffer for frames larger than br
	err     error  // sticky
}

// NewReader returns a Reader of frames from r, buffered with its own 64 KiB
// buffer.
func NewReader(r io.Reader) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, readBufSize)}
}

// Next returns the type and payload of the next frame. The payload is valid
// only until the next call. Unknown types are returned, not rejected: the
// caller decides (Validate reports ErrUnknownType).
//
// At a clean frame boundary the end of the stream gives io.EOF; within a
// frame it gives io.ErrUnexpectedEOF. A length prefix of 0 gives
// ErrMalformed, one above MaxFrameLen ErrFrameTooLarge. Other errors come
// from the underlying reader. After any error the position in the stream
// is lost, and every later call returns the same error.
func (r *Reader) Next() (MsgType, []byte, error) {
	if r.err != nil {
		return 0, nil, r.err
	}
	typ, p, err := r.next()
	if err != nil {
		r.err = err
		return 0, nil, err
	}
	return typ, p, nil
}

func (r *Reader) next() (MsgType, []byte, error) {
	if r.discard > 0 {
		// The bytes are buffered, so this cannot fail.
		r.br.Discard(r.discard)
		r.discard = 0
	}
	h, err := r.br.Peek(lenPrefix)
	if err != nil {
		if err == io.EOF && len(h) == 0 {
			return 0, nil, io.EOF
		}
		return 0, nil, readErr(err)
	}
	n := be.Uint32(h)
	switch {
	case n == 0:
		return 0, nil, fmt.Errorf("frame length 0: %w", ErrMalformed)
	case n > MaxFrameLen:
		return 0, nil, fmt.Errorf("frame length %d: %w", n, ErrFrameTooLarge)
	}
	if total := lenPrefix + int(n); total <= r.br.Size() {
		b, err := r.br.Peek(total)
		if err != nil {
			return 0, nil, readErr(err)
		}
		r.discard = total
		return MsgType(b[lenPrefix]), b[frameHeader:], nil
	}
	r.br.Discard(lenPrefix)
	b, err := r.readLarge(int(n))
	if err != nil {
		return 0, nil, err
	}
	return MsgType(b[0]), b[1:], nil
}

// readLarge reads n bytes into r.large, growing it (by doubling, up to
// MaxFrameLen) only as the bytes arrive.
func (r *Reader) readLarge(n int) ([]byte, error) {
	b := r.large[:0]
	for len(b) < n {
		if len(b) == cap(b) {
			nb := make([]byte, len(b), min(max(2*cap(b), minLargeBuf), MaxFrameLen))
			copy(nb, b)
			b = nb
			r.large = nb
		}
		m, err := io.ReadFull(r.br, b[len(b):min(cap(b), n)])
		b = b[:len(b)+m]
		if err != nil {
			return nil, readErr(err)
		}
	}
	return b, nil
}

// readErr turns an error met inside a frame into the one Next returns.
func readErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return io.ErrUnexpectedEOF
	}
	return fmt.Errorf("read frame: %w", err)
}
