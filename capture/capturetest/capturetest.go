// Package capturetest provides an in-memory capture.Source for tests:
// packets pushed into it come out of Read, in order, with their times.
package capturetest

import (
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tcpshadow/tcpshadow/capture"
)

// Source is a capture.Source fed by Push. Read returns capture.ErrTimeout
// after Timeout without a packet, and io.EOF once closed and drained.
type Source struct {
	Timeout time.Duration
	ch      chan packet
	once    sync.Once
	done    chan struct{}
	read    atomic.Uint64
}

type packet struct {
	b  []byte
	ts time.Time
}

var _ capture.Source = (*Source)(nil)

// New returns a source holding up to depth unread packets.
func New(depth int) *Source {
	return &Source{Timeout: 10 * time.Millisecond, ch: make(chan packet, depth), done: make(chan struct{})}
}

// Push queues a copy of an IP packet; it blocks when depth packets wait.
func (s *Source) Push(b []byte, ts time.Time) {
	select {
	case s.ch <- packet{b: append([]byte(nil), b...), ts: ts}:
	case <-s.done:
	}
}

func (s *Source) Read() ([]byte, time.Time, error) {
	select {
	case p := <-s.ch:
		s.read.Add(1)
		return p.b, p.ts, nil
	case <-s.done:
		return nil, time.Time{}, io.EOF
	case <-time.After(s.Timeout):
		return nil, time.Time{}, capture.ErrTimeout
	}
}

func (s *Source) Stats() capture.Stats { return capture.Stats{Read: s.read.Load()} }

func (s *Source) Close() error {
	s.once.Do(func() { close(s.done) })
	return nil
}
