package tcpstate

import "sync"

// Packet buffers come in four classes: headers with a little payload (a
// SYN, prod's packets as the worker needs them, small requests), an
// Ethernet MTU's packet (the common case, sized tight because buffered
// uploads are held in these), a jumbo frame's, and the largest IP packet, which GRO and TSO produce
// (scenario 24). A buffer has one owner at a time: the capture goroutine
// fills it and hands it to a worker through a queue; the worker either
// keeps it in a session or frees it, at one place per event. Nobody
// touches a buffer after handing it on.
var bufClasses = [...]int{256, 1536, 9216, 65535 + 64}

type pktBuf struct {
	b     []byte
	class uint8
}

var bufPools [len(bufClasses)]sync.Pool

func init() {
	for i, size := range bufClasses {
		bufPools[i].New = func() any { return &pktBuf{b: make([]byte, 0, size), class: uint8(i)} }
	}
}

// mtuBufSize is the class an Ethernet MTU's packet takes, for tests.
var mtuBufSize = bufClasses[1]

// bufClassSize is what a buffer for n bytes costs: the capacity of its
// class (0 if none holds n).
func bufClassSize(n int) int {
	for _, size := range bufClasses {
		if n <= size {
			return size
		}
	}
	return 0
}

// getBuf returns a buffer of length n, or nil if n is too large.
func getBuf(n int) *pktBuf {
	for i, size := range bufClasses {
		if n <= size {
			pb := bufPools[i].Get().(*pktBuf)
			pb.b = pb.b[:n]
			return pb
		}
	}
	return nil
}

// size is what the buffer costs in memory, for the budgets.
func (pb *pktBuf) size() int { return cap(pb.b) }

func (pb *pktBuf) free() { bufPools[pb.class].Put(pb) }
