// Package rawconn wraps a TCP connection so that its reads and writes
// are system calls the Go runtime is not told about.
//
// A system call made through package syscall or os announces itself to
// the scheduler, and the first one after the process has idled wakes the
// runtime's sysmon thread, which then polls every 20 µs until the process
// idles again. The control channel is read and written a few times per
// copied request; at low rates those wake-ups cost more than the work
// (docs/scaling.md). On a non-blocking socket read and write never sleep,
// so they can be made raw, with the wait left to Go's network poller as
// before, deadlines included.
//
// It must not be used for anything that can block in the kernel: a raw
// call holds its P for its whole duration.
package rawconn

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Conn is a *net.TCPConn whose Read and Write are raw system calls.
type Conn struct {
	*net.TCPConn
	rc syscall.RawConn

	// The closures RawConn calls, built once so a read or write does not
	// allocate; each call's buffer and outcome are passed through these.
	// rmu and wmu serialise Read and Write, whose state is shared with
	// their closure.
	rmu, wmu        sync.Mutex
	readFn, writeFn func(uintptr) bool
	rbuf, wbuf      []byte
	rn              int
	rerr, werr      unix.Errno
}

// Wrap returns c as a Conn when it is a TCP connection, and c itself
// otherwise (pipes in tests, already wrapped connections).
func Wrap(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	rw := &Conn{TCPConn: tc, rc: rc}
	rw.readFn = func(fd uintptr) bool {
		for {
			n, _, errno := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(rw.rbuf))), uintptr(len(rw.rbuf)))
			switch errno {
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				return false // wait in the poller
			}
			rw.rn, rw.rerr = int(n), errno
			return true
		}
	}
	rw.writeFn = func(fd uintptr) bool {
		for len(rw.wbuf) > 0 {
			n, _, errno := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(rw.wbuf))), uintptr(len(rw.wbuf)))
			switch errno {
			case 0:
				rw.wbuf = rw.wbuf[n:]
			case unix.EINTR:
			case unix.EAGAIN:
				return false
			default:
				rw.werr = errno
				return true
			}
		}
		return true
	}
	return rw
}

// Read reads like net.Conn's Read: io.EOF at the end of the stream, the
// poller's error (a deadline, a close) while waiting.
func (c *Conn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.rbuf, c.rn, c.rerr = b, 0, 0
	err := c.rc.Read(c.readFn)
	c.rbuf = nil
	switch {
	case err != nil:
		return 0, err // the poller's, already a *net.OpError naming the connection
	case c.rerr != 0:
		return 0, c.opErr("read", os.NewSyscallError("read", c.rerr))
	case c.rn == 0:
		return 0, io.EOF
	}
	return c.rn, nil
}

// Write writes all of b or fails, like net.Conn's Write.
func (c *Conn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf, c.werr = b, 0
	err := c.rc.Write(c.writeFn)
	n := len(b) - len(c.wbuf)
	c.wbuf = nil
	switch {
	case err != nil:
		return n, err
	case c.werr != 0:
		return n, c.opErr("write", os.NewSyscallError("write", c.werr))
	}
	return n, nil
}

func (c *Conn) opErr(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
