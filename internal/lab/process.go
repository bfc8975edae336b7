//go:build linux

package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Process is a long-running program started in a namespace with NS.Start.
// The lab tracks it until it exits and stops it on Close.
type Process struct {
	ns   *NS
	desc string // "name args..." for messages
	cmd  *cmdHandle
	out  *tailBuffer

	done chan struct{} // closed once err is set and the process is reaped
	err  error         // cmd.Wait's result; read only after done is closed
}

// cmdHandle narrows exec.Cmd to what Process needs after Start.
type cmdHandle struct {
	pid    int
	signal func(os.Signal) error
	wait   func() error
}

// Start starts name in the namespace and tracks it in the lab. Its stdout
// and stderr go to a buffer keeping the last 256 KiB (Output). When ctx is
// done the process gets SIGTERM, then SIGKILL after the lab's grace period
// (5 s); Close stops it the same way.
func (n *NS) Start(ctx context.Context, name string, args ...string) (*Process, error) {
	l := n.lab
	cmd := n.Command(ctx, name, args...)
	out := newTailBuffer(outputLimit)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = l.cfg.stopGrace
	p := &Process{
		ns:   n,
		desc: strings.Join(append([]string{name}, args...), " "),
		out:  out,
		done: make(chan struct{}),
	}

	// Holding mu across the start means Close either sees this process in
	// procs or refuses to start it: never a process it does not know about.
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, fmt.Errorf("start %s in %s: %w", name, n.name, ErrClosed)
	}
	req := spawnReq{cmd: cmd, done: make(chan error, 1)}
	l.spawn <- req
	if err := <-req.done; err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", name, n.name, err)
	}
	p.cmd = &cmdHandle{pid: cmd.Process.Pid, signal: cmd.Process.Signal, wait: cmd.Wait}
	l.procs[p] = struct{}{}
	go p.reap()
	return p, nil
}

func (p *Process) reap() {
	p.err = p.cmd.wait()
	close(p.done)
	l := p.ns.lab
	l.mu.Lock()
	delete(l.procs, p)
	l.mu.Unlock()
}

// PID returns the program's process ID (ip netns exec execs into it).
func (p *Process) PID() int { return p.cmd.pid }

// Output returns the last 256 KiB of the process's combined stdout and
// stderr so far.
func (p *Process) Output() string { return p.out.String() }

// Signal sends sig to the process. It fails with os.ErrProcessDone once the
// process has exited; the PID is never reused by mistake (pidfd).
func (p *Process) Signal(sig os.Signal) error { return p.cmd.signal(sig) }

// Done is closed when the process has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited and been reaped.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Wait waits for the process to exit and returns its exit error, as
// exec.Cmd.Wait does. It does not bound the wait; use Done with a timer, or
// Stop, for that.
func (p *Process) Wait() error {
	<-p.done
	return p.err
}

// Stop sends SIGTERM, waits up to timeout, then sends SIGKILL and waits a
// further bounded time. It returns the process's exit error (for example
// "signal: terminated"), or an error if it would not die.
func (p *Process) Stop(timeout time.Duration) error {
	if err := p.terminate(timeout); err != nil {
		return err
	}
	return p.err
}

// terminate stops the process and returns an error only if it is still
// running afterwards.
func (p *Process) terminate(timeout time.Duration) error {
	if p.Exited() {
		return nil
	}
	_ = p.cmd.signal(syscall.SIGTERM) // fails only if it has just exited
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
	}
	_ = p.cmd.signal(syscall.SIGKILL)
	t.Reset(killWait)
	select {
	case <-p.done:
		return nil
	case <-t.C:
		return fmt.Errorf("stop %s (pid %d) in %s: still running %v after SIGKILL",
			p.desc, p.cmd.pid, p.ns.name, killWait)
	}
}

func (p *Process) String() string {
	return p.desc + " (pid " + strconv.Itoa(p.cmd.pid) + ") in " + p.ns.name
}

// tailBuffer is an io.Writer keeping the last max bytes written.
type tailBuffer struct {
	max int

	mu      sync.Mutex // guards the fields below
	buf     []byte
	dropped int64
}

func newTailBuffer(max int) *tailBuffer { return &tailBuffer{max: max} }

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	// Compact only at twice the limit, so copying is amortised O(1) a byte.
	if len(b.buf) > 2*b.max {
		cut := len(b.buf) - b.max
		b.dropped += int64(cut)
		b.buf = append(b.buf[:0], b.buf[cut:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, dropped := b.buf, b.dropped
	if len(s) > b.max {
		dropped += int64(len(s) - b.max)
		s = s[len(s)-b.max:]
	}
	if dropped > 0 {
		return fmt.Sprintf("[%d bytes dropped]\n%s", dropped, s)
	}
	return string(s)
}

type spawnReq struct {
	cmd  *exec.Cmd
	done chan error
}

// spawner starts every Process from one locked OS thread. The thread is
// never unlocked, so it exits with the goroutine when Close closes l.spawn.
// Children carry Pdeathsig (SIGKILL), which Linux ties to the thread that
// forked them, not to the process: started from an arbitrary goroutine, a
// child would be killed as soon as the runtime retired that thread (which it
// does when a goroutine exits while locked to it).
func (l *Lab) spawner() {
	runtime.LockOSThread()
	for req := range l.spawn {
		req.done <- req.cmd.Start()
	}
}
