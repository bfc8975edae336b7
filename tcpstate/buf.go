package tcpstate

import "sync"

// Packet buffers come in two sizes: one for anything an Ethernet MTU can
// carry, one for the super-packets GRO and TSO produce (scenario 24). A
// buffer has one owner at a time: the capture goroutine fills it, hands it
// to the worker through a queue, the worker either queues it in a session
// or frees it. Nobody touches a buffer after handing it on.
const (
	smallBufSize = 2048
	bigBufSize   = 65535 + 64 // largest IPv4 packet plus IPv6 slack
)

type pktBuf struct {
	b   []byte
	big bool
}

var (
	smallBufs = sync.Pool{New: func() any { return &pktBuf{b: make([]byte, 0, smallBufSize)} }}
	bigBufs   = sync.Pool{New: func() any { return &pktBuf{b: make([]byte, 0, bigBufSize), big: true} }}
)

// getBuf returns a buffer of length n, or nil if n is too large.
func getBuf(n int) *pktBuf {
	var pb *pktBuf
	switch {
	case n <= smallBufSize:
		pb = smallBufs.Get().(*pktBuf)
	case n <= bigBufSize:
		pb = bigBufs.Get().(*pktBuf)
	default:
		return nil
	}
	pb.b = pb.b[:n]
	return pb
}

// size is what the buffer costs in memory, for the budgets.
func (pb *pktBuf) size() int { return cap(pb.b) }

func (pb *pktBuf) free() {
	if pb.big {
		bigBufs.Put(pb)
		return
	}
	smallBufs.Put(pb)
}
