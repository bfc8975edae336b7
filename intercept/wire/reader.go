package wire

import (
	"errors"
	"fmt"
	"io"
)

const (
	readBufSize = 64 << 10 // the Reader's buffer after the handshake
	minLargeBuf = 64 << 10 // first allocation for a frame that does not fit the buffer
	// handshakeBufSize is a handshake Reader's buffer: every frame the
	// handshake takes fits it.
	handshakeBufSize = 2 << 10
)

// Both handshake limits are consistent (fails to compile otherwise).
const _ = uint(handshakeBufSize - lenPrefix - MaxHandshakeFrameLen)

// Reader splits a byte stream into frames. It is not safe for concurrent
// use; one goroutine reads a connection.
//
// Frames that fit its read buffer are returned in place, without a copy;
// larger ones are assembled in a second buffer that grows as their bytes
// arrive, never beyond the frame limit, so a length prefix alone cannot
// make the Reader allocate. Both buffers are reused: Next allocates
// nothing in steady state.
//
// A handshake Reader (NewHandshakeReader) starts with a 2 KiB buffer and
// takes frames of at most MaxHandshakeFrameLen bytes, so that a peer that
// has proved nothing holds next to no memory; Resize grows it once the
// peer is authenticated, keeping what it has buffered. A sealed Reader
// (SetOpener) opens each frame and skips those that fail (ErrBadMAC).
type Reader struct {
	rd     io.Reader
	buf    []byte // buffered bytes are buf[r:w]
	r, w   int
	maxLen int     // largest L taken
	large  []byte  // assembly buffer for frames larger than buf
	open   *Opener // nil: frames are not sealed
	rerr   error   // the stream's error, met while buffering ahead
	err    error   // sticky
}

// NewReader returns a Reader of frames up to MaxFrameLen from rd, with its
// own 64 KiB buffer.
func NewReader(rd io.Reader) *Reader {
	return &Reader{rd: rd, buf: make([]byte, readBufSize), maxLen: MaxFrameLen}
}

// NewHandshakeReader returns a Reader for a connection's handshake: a 2
// KiB buffer and frames of at most MaxHandshakeFrameLen bytes.
func NewHandshakeReader(rd io.Reader) *Reader {
	return &Reader{rd: rd, buf: make([]byte, handshakeBufSize), maxLen: MaxHandshakeFrameLen}
}

// Resize gives r a read buffer of bufSize bytes and a frame limit of
// maxLen (at most MaxFrameLen), keeping the bytes it has buffered: a
// handshake Reader becomes NewReader's with Resize(64<<10, MaxFrameLen).
// It must not be called while a payload Next returned is in use.
func (r *Reader) Resize(bufSize, maxLen int) {
	bufSize = max(bufSize, r.w-r.r, lenPrefix+1)
	nb := make([]byte, bufSize)
	r.w = copy(nb, r.buf[r.r:r.w])
	r.r = 0
	r.buf = nb
	r.maxLen = min(max(maxLen, 1), MaxFrameLen)
}

// SetOpener makes r open every later frame with o (see Opener); nil stops
// it.
func (r *Reader) SetOpener(o *Opener) { r.open = o }

// Buffered returns how many bytes r has read from the stream beyond the
// frames it returned.
func (r *Reader) Buffered() int { return r.w - r.r }

// Next returns the type and payload of the next frame. The payload is valid
// only until the next call. Unknown types are returned, not rejected: the
// caller decides (Validate reports ErrUnknownType).
//
// At a clean frame boundary the end of the stream gives io.EOF; within a
// frame it gives io.ErrUnexpectedEOF. A length prefix of 0 gives
// ErrMalformed, one above the limit ErrFrameTooLarge. Other errors come
// from the underlying reader. After any of these the position in the
// stream is lost, and every later call returns the same error. A sealed
// Reader returns ErrBadMAC for a frame whose tag does not verify, which is
// not sticky: the next call reads the next frame.
func (r *Reader) Next() (MsgType, []byte, error) {
	if r.err != nil {
		return 0, nil, r.err
	}
	body, err := r.next()
	if err != nil {
		r.err = err
		return 0, nil, err
	}
	if r.open != nil {
		var ok bool
		if body, ok = r.open.open(body); !ok {
			return 0, nil, ErrBadMAC
		}
	}
	return MsgType(body[0]), body[1:], nil
}

// next returns the next frame's type byte and payload (tag included).
func (r *Reader) next() ([]byte, error) {
	if err := r.fill(lenPrefix); err != nil {
		if err == io.EOF && r.w == r.r {
			return nil, io.EOF
		}
		return nil, readErr(err)
	}
	n := int(be.Uint32(r.buf[r.r:]))
	switch {
	case n == 0:
		return nil, fmt.Errorf("frame length 0: %w", ErrMalformed)
	case n > r.maxLen:
		return nil, fmt.Errorf("frame length %d: %w", n, ErrFrameTooLarge)
	}
	if total := lenPrefix + n; total <= len(r.buf) {
		if err := r.fill(total); err != nil {
			return nil, readErr(err)
		}
		b := r.buf[r.r+lenPrefix : r.r+total]
		r.r += total
		return b, nil
	}
	r.r += lenPrefix
	return r.readLarge(n)
}

// fill reads until at least k bytes are buffered (k ≤ len(r.buf)),
// moving the buffered bytes to the front first if they would not fit. An
// error that arrives with enough bytes is kept for the next fill.
func (r *Reader) fill(k int) error {
	if r.w-r.r >= k {
		return nil
	}
	if len(r.buf)-r.r < k {
		r.w = copy(r.buf, r.buf[r.r:r.w])
		r.r = 0
	}
	for zeros := 0; r.w-r.r < k; {
		if r.rerr != nil {
			return r.rerr
		}
		m, err := r.rd.Read(r.buf[r.w:])
		r.w += m
		r.rerr = err
		if m > 0 {
			zeros = 0
		} else if zeros++; zeros >= 100 && err == nil {
			return io.ErrNoProgress // as bufio: a reader returning 0, nil forever
		}
	}
	return nil
}

// readLarge reads an n-byte frame body into r.large, first what is
// buffered, then from the stream, growing r.large (by doubling, up to the
// limit) only as the bytes arrive.
func (r *Reader) readLarge(n int) ([]byte, error) {
	b := r.large[:0]
	for len(b) < n {
		if len(b) == cap(b) {
			nb := make([]byte, len(b), min(max(2*cap(b), minLargeBuf), r.maxLen))
			copy(nb, b)
			b = nb
			r.large = nb
		}
		want := min(cap(b), n)
		if r.r < r.w {
			m := copy(b[len(b):want], r.buf[r.r:r.w])
			r.r += m
			b = b[:len(b)+m]
			continue
		}
		if r.rerr != nil {
			return nil, readErr(r.rerr)
		}
		m, err := io.ReadFull(r.rd, b[len(b):want])
		b = b[:len(b)+m]
		if err != nil {
			r.rerr = err
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
