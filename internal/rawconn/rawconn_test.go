package rawconn

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

// pair returns both ends of a TCP connection between the lab's prod and
// shadow, wrapped.
func pair(t *testing.T) (*Conn, *Conn) {
	t.Helper()
	l := lab.NewT(t, lab.Config{})
	ln, err := l.Prod.Listen("tcp", net.JoinHostPort(lab.ProdV4.String(), "4100"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			c = nil
		}
		accepted <- c
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dialed, err := l.Shadow.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	srv := <-accepted
	if srv == nil {
		t.Fatal("accept failed")
	}
	a, b := Wrap(dialed), Wrap(srv)
	t.Cleanup(func() { a.Close(); b.Close() })
	ca, ok1 := a.(*Conn)
	cb, ok2 := b.(*Conn)
	if !ok1 || !ok2 {
		t.Fatalf("Wrap of TCP connections gave %T and %T", a, b)
	}
	return ca, cb
}

// TestStreamsBothWays sends 4 MiB each way at once, more than the socket
// buffers hold, so writes and reads both wait in the poller, and checks
// the bytes arrive whole and in order.
func TestStreamsBothWays(t *testing.T) {
	a, b := pair(t)
	data := make([]byte, 4<<20)
	for i := range data {
		data[i] = byte(i * 7 >> 3)
	}
	errs := make(chan error, 2)
	for _, w := range []*Conn{a, b} {
		go func() {
			_, err := w.Write(data)
			errs <- err
		}()
	}
	for _, r := range []*Conn{a, b} {
		r.SetReadDeadline(time.Now().Add(10 * time.Second))
		got := make([]byte, len(data))
		if _, err := io.ReadFull(r, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatal("bytes changed on the way")
		}
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

func TestDeadlineEOFAndErrors(t *testing.T) {
	a, b := pair(t)
	a.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	var ne net.Error
	if _, err := a.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past its deadline: %v, want a timeout", err)
	}
	a.SetReadDeadline(time.Time{})
	if _, err := b.Write([]byte("last")); err != nil {
		t.Fatal(err)
	}
	b.Close()
	got, err := io.ReadAll(a)
	if err != nil || string(got) != "last" {
		t.Fatalf("read to the end: %q, %v; want \"last\" then EOF", got, err)
	}
	// The peer is gone: a write fails, at the latest once its reset came.
	var werr error
	for i := 0; i < 50 && werr == nil; i++ {
		_, werr = a.Write([]byte("x"))
		time.Sleep(5 * time.Millisecond)
	}
	if werr == nil {
		t.Fatal("writes to a closed peer kept succeeding")
	}
	a.Close()
	if _, err := a.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("read after Close: %v, want net.ErrClosed", err)
	}
}

func TestNoAllocations(t *testing.T) {
	a, b := pair(t)
	msg, buf := []byte("0123456789abcdef"), make([]byte, 16)
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := a.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(b, buf); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per write and read, want 0", allocs)
	}
}

func TestWrapLeavesOthers(t *testing.T) {
	p, q := net.Pipe()
	defer p.Close()
	defer q.Close()
	if Wrap(p) != p {
		t.Error("Wrap changed a pipe")
	}
}
