package divert

import (
	"encoding/binary"
	"errors"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcpshadow/tcpshadow/capture"
)

// fakeConn hands out queued datagrams and records what is sent.
type fakeConn struct {
	mu     sync.Mutex
	in     [][]byte
	loop   []byte // when set, every recv returns it (allocation tests)
	errs   []error
	sent   [][]byte
	closed int
}

func (c *fakeConn) recv(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.loop != nil {
		return copy(b, c.loop), nil
	}
	if len(c.errs) > 0 {
		err := c.errs[0]
		c.errs = c.errs[1:]
		if err != nil {
			return 0, err
		}
	}
	if len(c.in) == 0 {
		return 0, unix.EAGAIN
	}
	n := copy(b, c.in[0])
	c.in = c.in[1:]
	return n, nil
}

func (c *fakeConn) send(b []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.loop == nil {
		c.sent = append(c.sent, append([]byte(nil), b...))
	}
	return nil
}

func (c *fakeConn) close() error { c.mu.Lock(); c.closed++; c.mu.Unlock(); return nil }

// verdicts returns the ids of the verdicts sent, and whether every one
// was a drop.
func (c *fakeConn) verdicts() (ids []uint32, allDrop bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	allDrop = true
	for _, b := range c.sent {
		if msgType(b) != typeVerdict {
			continue
		}
		a := b[nlHdrLen+nfgHdrLen+attrHdrLen:]
		allDrop = allDrop && binary.BigEndian.Uint32(a) == verdictDrop
		ids = append(ids, binary.BigEndian.Uint32(a[4:]))
	}
	return ids, allDrop
}

func testQueue(c *fakeConn) *Queue {
	q := newQueue(DefaultConfig(), c)
	q.procPath = "/nonexistent"
	return q
}

// TestQueueReadDropsEach: every packet read has had its DROP verdict
// sent; malformed messages and acks are counted and skipped; a message
// with an id but no payload still gets its verdict.
func TestQueueReadDropsEach(t *testing.T) {
	noPayload := configMsg(1, 5, attr(attrPacketHdr, 0, 0, 0, 3, 8, 0, 3))
	binary.NativeEndian.PutUint16(noPayload[nlType:], typePacket)
	ack := make([]byte, nlHdrLen+4)
	binary.NativeEndian.PutUint32(ack, uint32(len(ack)))
	binary.NativeEndian.PutUint16(ack[nlType:], nlmsgError)
	c := &fakeConn{in: [][]byte{
		packetMsg(1, []byte{0x45, 1}, 0),
		append(packetMsg(2, []byte{0x45, 2}, 0), ack...), // two messages in one datagram
		noPayload,
		{1, 2, 3},
		packetMsg(4, []byte{0x60, 4}, 0),
	}}
	q := testQueue(c)
	var got []byte
	for range 3 {
		b, _, err := q.Read()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, b[1])
	}
	if string(got) != "\x01\x02\x04" {
		t.Fatalf("read %v, want packets 1 2 4", got)
	}
	if _, _, err := q.Read(); !errors.Is(err, capture.ErrTimeout) {
		t.Fatalf("idle read: %v, want ErrTimeout", err)
	}
	ids, allDrop := c.verdicts()
	if len(ids) != 4 || ids[0] != 1 || ids[1] != 2 || ids[2] != 3 || ids[3] != 4 || !allDrop {
		t.Fatalf("verdicts %v (all drop %v), want drops of 1 2 3 4", ids, allDrop)
	}
	st := q.QueueStats()
	if st.Read != 3 || st.Malformed != 2 || st.Other != 1 {
		t.Fatalf("stats %+v: want 3 read, 2 malformed, 1 other", st)
	}
}

// TestQueueOverrun: ENOBUFS (the kernel dropped packets for a full
// socket) is counted, and reading goes on.
func TestQueueOverrun(t *testing.T) {
	c := &fakeConn{errs: []error{unix.ENOBUFS}, in: [][]byte{packetMsg(1, []byte{0x45}, 0)}}
	q := testQueue(c)
	if _, _, err := q.Read(); err != nil {
		t.Fatal(err)
	}
	if st := q.QueueStats(); st.Overruns != 1 || st.Read != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestQueueClose: Read after Close is io.EOF, and the socket is closed
// once.
func TestQueueClose(t *testing.T) {
	c := &fakeConn{}
	q := testQueue(c)
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q.Close()
	if _, _, err := q.Read(); !errors.Is(err, io.EOF) {
		t.Fatalf("read after close: %v", err)
	}
	if c.closed != 1 {
		t.Fatalf("closed %d times", c.closed)
	}
}

// TestQueueCloseDuringRead: a Close while Read waits ends that Read with
// io.EOF, and the socket is closed once, by the reader.
func TestQueueCloseDuringRead(t *testing.T) {
	c := &blockingConn{fakeConn: &fakeConn{}, entered: make(chan struct{}), release: make(chan struct{})}
	q := newQueue(DefaultConfig(), c)
	errc := make(chan error, 1)
	go func() { _, _, err := q.Read(); errc <- err }()
	<-c.entered
	q.Close()
	if c.closed != 0 {
		t.Fatal("Close closed the socket under a Read")
	}
	close(c.release)
	select {
	case err := <-errc:
		if !errors.Is(err, io.EOF) {
			t.Fatalf("read: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Read did not return")
	}
	if c.closed != 1 {
		t.Fatalf("closed %d times", c.closed)
	}
}

type blockingConn struct {
	*fakeConn
	entered, release chan struct{}
}

func (c *blockingConn) recv([]byte) (int, error) {
	close(c.entered)
	<-c.release
	return 0, unix.EAGAIN
}

// TestQueueReadZeroAlloc: reading a packet and giving its verdict
// allocates nothing.
func TestQueueReadZeroAlloc(t *testing.T) {
	c := &fakeConn{loop: packetMsg(1, make([]byte, 60), 0)}
	q := testQueue(c)
	if n := testing.AllocsPerRun(1000, func() {
		if _, _, err := q.Read(); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("Read allocates %v per packet", n)
	}
}

func TestReadKernelQueue(t *testing.T) {
	path := t.TempDir() + "/q"
	writeFile(t, path, "    0  23442     0 2   256     0     0        0  1\n36524   991     2 2   256     5     7       44  1\n")
	k, err := ReadKernelQueue(path, 36524)
	if err != nil {
		t.Fatal(err)
	}
	if k.PortID != 991 || k.Total != 2 || k.CopyMode != 2 || k.CopyRange != 256 || k.Dropped != 5 || k.UserDropped != 7 || k.IDSequence != 44 {
		t.Fatalf("read %+v", k)
	}
	if _, err := ReadKernelQueue(path, 3); !errors.Is(err, ErrNotBound) {
		t.Fatalf("queue 3: %v, want ErrNotBound", err)
	}
	if _, err := ReadKernelQueue(path+"x", 3); !errors.Is(err, ErrNotBound) {
		t.Fatalf("no file: %v, want ErrNotBound", err)
	}
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}
