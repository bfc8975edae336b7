package wire

import (
	"slices"

	"github.com/tcpshadow/tcpshadow/rewrite"
)

const (
	replyBatchInitCap = 8 << 10
	flowBatchInitCap  = 1 << 10
)

// ReplyBatch assembles one Replies frame on the agent side. Reuse one
// batch: after its first fills it allocates nothing. The zero value is an
// empty batch ready for use. It is not safe for concurrent use.
//
//	if !b.Add(ts, reply) {
//		if !b.Full() {
//			// reply length out of range: drop and count it
//		} else {
//			send(b.Frame()); b.Reset(); b.Add(ts, reply)
//		}
//	}
type ReplyBatch struct {
	buf []byte // the frame so far; its length and count are patched by Frame
	n   int    // records in buf
}

// Reset empties the batch, keeping its buffer.
func (b *ReplyBatch) Reset() {
	if cap(b.buf) == 0 {
		b.buf = make([]byte, 0, replyBatchInitCap)
	}
	b.buf = appendFrameHeader(b.buf[:0], TypeReplies, 0)
	b.buf = append(b.buf, 0, 0) // count
	b.n = 0
}

// Add appends one record: the capture time in unix nanoseconds and the
// reply, its IP and TCP headers followed by the prefix of its payload the
// peer asked for (the caller cuts it), which is copied. It returns false,
// changing nothing, when the record cannot go into this batch: either
// len(reply) is outside MinReplyHeader..MaxReplyLen (it never fits; Full
// may be false) or the batch is full (Full reports true; send Frame and
// Reset).
func (b *ReplyBatch) Add(ts int64, reply []byte) bool {
	if len(reply) < MinReplyHeader || len(reply) > MaxReplyLen {
		return false
	}
	if b.n >= MaxRepliesPerFrame || b.Size()+replyRecHdr+len(reply)+TagLen > lenPrefix+MaxFrameLen {
		return false
	}
	if len(b.buf) == 0 {
		b.Reset()
	}
	b.buf = be.AppendUint64(b.buf, uint64(ts))
	b.buf = be.AppendUint16(b.buf, uint16(len(reply)))
	b.buf = append(b.buf, reply...)
	b.n++
	return true
}

// Full reports whether a record of MaxReplyLen bytes would not fit, by
// count or by MaxFrameLen (a tag included). After Add returns false, Full
// tells a full batch from an unacceptable reply.
func (b *ReplyBatch) Full() bool {
	return b.n >= MaxRepliesPerFrame || b.Size()+replyRecHdr+MaxReplyLen+TagLen > lenPrefix+MaxFrameLen
}

// Len returns the number of records.
func (b *ReplyBatch) Len() int { return b.n }

// Size returns the length in bytes of the frame Frame would return,
// length prefix included.
func (b *ReplyBatch) Size() int {
	if len(b.buf) == 0 {
		return frameHeader + countLen
	}
	return len(b.buf)
}

// Frame returns the complete Replies frame, or nil if the batch is empty
// (a frame with no records is malformed). It is valid until the next Add
// or Reset, and has room for a tag: Sealer.Seal does not allocate.
func (b *ReplyBatch) Frame() []byte {
	if b.n == 0 {
		return nil
	}
	b.buf = tagRoom(b.buf)
	be.PutUint32(b.buf, uint32(len(b.buf)-lenPrefix))
	be.PutUint16(b.buf[frameHeader:], uint16(b.n))
	return b.buf
}

// tagRoom makes sure frame has TagLen bytes of spare capacity; a reused
// batch grows it once.
func tagRoom(frame []byte) []byte {
	if cap(frame)-len(frame) < TagLen {
		return slices.Grow(frame, TagLen)
	}
	return frame
}

// FlowBatch assembles one Register or Deregister frame on the copier side.
// Call Reset with the frame type before the first Add. Reuse one batch:
// after its first fills it allocates nothing. It is not safe for concurrent
// use.
type FlowBatch struct {
	buf []byte
	n   int
	typ MsgType
}

// Reset empties the batch and sets the type of the next frame. It panics
// if typ is neither TypeRegister nor TypeDeregister.
func (b *FlowBatch) Reset(typ MsgType) {
	if typ != TypeRegister && typ != TypeDeregister {
		panic("wire: FlowBatch.Reset with message type " + typ.String())
	}
	if cap(b.buf) == 0 {
		b.buf = make([]byte, 0, flowBatchInitCap)
	}
	b.buf = appendFrameHeader(b.buf[:0], typ, 0)
	b.buf = append(b.buf, 0, 0) // count
	b.n, b.typ = 0, typ
}

// Add appends a flow in the copier→shadow direction (Src is the forged
// client endpoint, Dst the shadow endpoint). It returns false, changing
// nothing, if t fails FlowOK (Full is then false: drop and count it) or the
// batch is full (Full reports true; send Frame and Reset). It panics if
// Reset was never called.
func (b *FlowBatch) Add(t rewrite.Tuple) bool {
	if b.typ == 0 {
		panic("wire: FlowBatch.Add before Reset")
	}
	if !FlowOK(t) || b.n >= MaxFlowsPerFrame {
		return false
	}
	b.buf = appendFlow(b.buf, &t)
	b.n++
	return true
}

// Full reports whether the batch holds MaxFlowsPerFrame flows.
func (b *FlowBatch) Full() bool { return b.n >= MaxFlowsPerFrame }

// Type returns the frame type set by the last Reset.
func (b *FlowBatch) Type() MsgType { return b.typ }

// Len returns the number of flows.
func (b *FlowBatch) Len() int { return b.n }

// Size returns the length in bytes of the frame Frame would return,
// length prefix included.
func (b *FlowBatch) Size() int { return frameHeader + countLen + b.n*FlowLen }

// Frame returns the complete frame, or nil if the batch is empty. It is
// valid until the next Add or Reset, and has room for a tag.
func (b *FlowBatch) Frame() []byte {
	if b.n == 0 {
		return nil
	}
	b.buf = tagRoom(b.buf)
	be.PutUint32(b.buf, uint32(len(b.buf)-lenPrefix))
	be.PutUint16(b.buf[frameHeader:], uint16(b.n))
	return b.buf
}
