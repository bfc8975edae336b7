package capture

/*
#cgo linux LDFLAGS: -lpcap
#include <stdlib.h>
#include <pcap.h>

// ring_slots holds pcap_next_ex's out-parameters in C memory, so passing
// them costs no Go allocation.
struct ring_slots {
	struct pcap_pkthdr *hdr;
	const u_char *data;
};

static int ring_next(pcap_t *p, struct ring_slots *s) {
	return pcap_next_ex(p, &s->hdr, &s->data);
}
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/google/gopacket/pcap"
	"golang.org/x/sys/unix"
)

// ring reads a live, non-blocking pcap handle without ever blocking a
// thread: pcap_next_ex returns at once, and when the ring is empty the
// goroutine parks in Go's network poller on the capture socket until the
// kernel hands over a block.
//
// gopacket's own read waits in poll(2) inside a cgo call instead. The
// runtime cannot tell that from work, so it hands the reader's P to
// another thread and back, over and over; in the lab at 10k copied
// requests a second, reading this way took the copier from 39 to 25 µs
// of CPU a request, and idle daemons from 3% of a core to none. It needs
// the handle's pcap_t, which gopacket keeps unexported; it is taken by
// reflection and checked against the handle before use (newRing), so a
// gopacket that changed shape falls back to gopacket's read, never to
// a wrong pointer.
type ring struct {
	p     *C.pcap_t
	slots *C.struct_ring_slots // C memory, freed by close
	poll  *os.File             // a dup of the capture socket, registered with the poller
	raw   syscall.RawConn
	nanos int64 // timestamp unit in nanoseconds: 1000 for µs, 1 for ns

	// waitFn is the closure rc.Read calls, built once so waiting does not
	// allocate; it reports its outcome in got and err.
	waitFn func(uintptr) bool
	got    int
	err    error
	mu     *sync.Mutex // the source's: held around every call into libpcap
	closed func() bool
}

// ringWait bounds one wait for packets: Read returns ErrTimeout after it,
// so an idle source wakes its reader a few times a second at most.
const ringWait = 250 * time.Millisecond

// handlePtr returns h's pcap_t, or nil if it cannot be found.
func handlePtr(h *pcap.Handle) *C.pcap_t {
	f := reflect.ValueOf(h).Elem().FieldByName("cptr")
	if !f.IsValid() || f.Kind() != reflect.Pointer {
		return nil
	}
	return (*C.pcap_t)(f.UnsafePointer())
}

// newRing sets up the poller-based read for a live handle. It returns an
// error when the handle cannot be read that way; the caller then keeps
// gopacket's read.
func newRing(h *pcap.Handle, mu *sync.Mutex, closed func() bool) (*ring, error) {
	p := handlePtr(h)
	if p == nil {
		return nil, errors.New("no pcap_t in gopacket's handle")
	}
	// The pointer must be the handle's: same link type and snap length.
	if int(C.pcap_datalink(p)) != int(h.LinkType()) || int(C.pcap_snapshot(p)) != h.SnapLen() {
		return nil, errors.New("gopacket's handle does not hold its pcap_t where expected")
	}
	// gopacket made the handle non-blocking (it has a timeout); be sure.
	var errbuf [C.PCAP_ERRBUF_SIZE]C.char
	if C.pcap_getnonblock(p, &errbuf[0]) != 1 {
		return nil, errors.New("handle is blocking")
	}
	fd := int(C.pcap_get_selectable_fd(p))
	if fd < 0 {
		return nil, errors.New("no selectable descriptor")
	}
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup capture socket: %w", err)
	}
	// O_NONBLOCK belongs to the socket, shared with libpcap's descriptor:
	// harmless, libpcap reads the ring, not the socket.
	if err := unix.SetNonblock(dup, true); err != nil {
		unix.Close(dup)
		return nil, fmt.Errorf("capture socket non-blocking: %w", err)
	}
	f := os.NewFile(uintptr(dup), "pcap")
	raw, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("capture socket: %w", err)
	}
	r := &ring{
		p: p, poll: f, raw: raw, nanos: 1000, mu: mu, closed: closed,
		slots: (*C.struct_ring_slots)(C.calloc(1, C.size_t(unsafe.Sizeof(C.struct_ring_slots{})))),
	}
	if C.pcap_get_tstamp_precision(p) == C.PCAP_TSTAMP_PRECISION_NANO {
		r.nanos = 1
	}
	r.waitFn = func(uintptr) bool {
		r.got, r.err = r.next()
		return r.got != 0 || r.err != nil
	}
	// A pollable file: reads park in the poller. Otherwise this is no
	// better than gopacket's read.
	if err := f.SetReadDeadline(time.Time{}); err != nil {
		r.close()
		return nil, fmt.Errorf("capture socket not pollable: %w", err)
	}
	return r, nil
}

// next calls pcap_next_ex once, under the source's lock (pcap_stats must
// not run meanwhile): 1 with a packet in r.slots, 0 when the ring is
// empty.
func (r *ring) next() (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed() {
		return 0, errClosed
	}
	switch n := C.ring_next(r.p, r.slots); n {
	case 1, 0:
		return int(n), nil
	default:
		return 0, fmt.Errorf("read packet: %s", C.GoString(C.pcap_geterr(r.p)))
	}
}

var errClosed = errors.New("capture closed")

// read returns the next frame, waiting up to ringWait for one.
func (r *ring) read() ([]byte, time.Time, error) {
	n, err := r.next()
	if n == 0 && err == nil {
		if err := r.poll.SetReadDeadline(time.Now().Add(ringWait)); err != nil {
			return nil, time.Time{}, errClosed
		}
		if r.closed() { // Close's wake may have come before that deadline
			return nil, time.Time{}, errClosed
		}
		r.got, r.err = 0, nil
		if err := r.raw.Read(r.waitFn); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && !r.closed() {
				return nil, time.Time{}, ErrTimeout
			}
			return nil, time.Time{}, errClosed
		}
		err = r.err
	}
	if err != nil {
		return nil, time.Time{}, err
	}
	hdr := r.slots.hdr
	data := unsafe.Slice((*byte)(unsafe.Pointer(r.slots.data)), int(hdr.caplen))
	ts := time.Unix(int64(hdr.ts.tv_sec), int64(hdr.ts.tv_usec)*r.nanos)
	return data, ts, nil
}

// wake makes a waiting read return at once.
func (r *ring) wake() { _ = r.poll.SetReadDeadline(time.Unix(1, 0)) }

// close releases what newRing made; the pcap handle is the caller's.
func (r *ring) close() {
	r.poll.Close()
	C.free(unsafe.Pointer(r.slots))
}
