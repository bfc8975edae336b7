package capture

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

// liveRig captures UDP to port 4999 on the shadow's lab link; send sends
// datagrams to it from prod.
type liveRig struct {
	src  *tpacketSource
	conn net.Conn
}

func newLiveRig(t *testing.T) *liveRig {
	t.Helper()
	l := lab.NewT(t, lab.Config{})
	var src Source
	if err := l.Shadow.Do(func() error {
		var err error
		src, err = OpenLive(Config{Interface: lab.HostLink, Filter: "udp and dst port 4999", InboundOnly: true})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	// Something listens, so the shadow answers no ICMP that would fail the
	// sender's next write.
	var sink net.PacketConn
	if err := l.Shadow.Do(func() error {
		var err error
		sink, err = net.ListenPacket("udp4", net.JoinHostPort(lab.ShadowV4.String(), "4999"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := l.Prod.DialContext(ctx, "udp", net.JoinHostPort(lab.ShadowV4.String(), "4999"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &liveRig{src: src.(*tpacketSource), conn: conn}
}

func (r *liveRig) send(t *testing.T, n int) {
	t.Helper()
	for i := range n {
		if _, err := fmt.Fprintf(r.conn, "datagram %06d", i); err != nil {
			t.Fatal(err)
		}
	}
}

// readPacket reads until a packet comes, failing after a bound.
func (r *liveRig) readPacket(t *testing.T) ([]byte, time.Time) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		pkt, ts, err := r.src.Read()
		if errors.Is(err, ErrTimeout) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		return pkt, ts
	}
	t.Fatal("no packet within 5s")
	return nil, time.Time{}
}

// TestLiveReadsThroughThePoller checks that a live source reads its ring
// (waiting in Go's poller) and gets every packet whole, in order and
// stamped with its capture time.
func TestLiveReadsThroughThePoller(t *testing.T) {
	r := newLiveRig(t)
	const n = 300
	before := time.Now().Add(-time.Second)
	r.send(t, n)
	for i := range n {
		pkt, ts := r.readPacket(t)
		want := fmt.Sprintf("datagram %06d", i)
		if len(pkt) != 20+8+len(want) || string(pkt[28:]) != want || pkt[0]>>4 != 4 {
			t.Fatalf("packet %d: % x, want an IPv4 UDP datagram carrying %q", i, pkt, want)
		}
		if ts.Before(before) || ts.After(time.Now().Add(time.Second)) {
			t.Fatalf("packet %d stamped %v, sent about %v", i, ts, before.Add(time.Second))
		}
	}
	if st := r.src.Stats(); st.Read != n || st.KernelRecv < n {
		t.Errorf("stats %+v, want %d read and received", st, n)
	}
}

// TestLiveIdleAndClose checks that an idle Read returns ErrTimeout, that
// Close ends a Read waiting in the poller with io.EOF, and that a packet
// still held when Close comes stays readable until the next Read, which
// then releases the handle.
func TestLiveIdleAndClose(t *testing.T) {
	t.Run("Idle", func(t *testing.T) {
		r := newLiveRig(t)
		if _, _, err := r.src.Read(); !errors.Is(err, ErrTimeout) {
			t.Fatalf("idle Read: %v, want ErrTimeout", err)
		}
	})
	t.Run("CloseWhileWaiting", func(t *testing.T) {
		r := newLiveRig(t)
		done := make(chan error, 1)
		go func() {
			for {
				_, _, err := r.src.Read()
				if !errors.Is(err, ErrTimeout) {
					done <- err
					return
				}
			}
		}()
		time.Sleep(50 * time.Millisecond) // let it park
		r.src.Close()
		select {
		case err := <-done:
			if !errors.Is(err, io.EOF) {
				t.Fatalf("Read after Close: %v, want io.EOF", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Close did not end a waiting Read")
		}
		r.src.mu.Lock()
		defer r.src.mu.Unlock()
		if !r.src.released {
			t.Error("handle not released after Close and the reader's return")
		}
	})
	t.Run("CloseWhileHolding", func(t *testing.T) {
		r := newLiveRig(t)
		r.send(t, 1)
		pkt, _ := r.readPacket(t)
		want := string(pkt)
		r.src.Close()
		r.src.mu.Lock()
		released := r.src.released
		r.src.mu.Unlock()
		if released {
			t.Fatal("Close released the handle while the caller held a packet in its ring")
		}
		if string(pkt) != want { // would fault if the ring were unmapped
			t.Fatal("held packet changed under the caller")
		}
		if _, _, err := r.src.Read(); !errors.Is(err, io.EOF) {
			t.Fatalf("Read after Close: %v, want io.EOF", err)
		}
		r.src.mu.Lock()
		released = r.src.released
		r.src.mu.Unlock()
		if !released {
			t.Error("the Read after Close did not release the handle")
		}
	})
}

// TestLiveCloseUnderTraffic closes sources at varied moments while their
// reader is reading a stream of packets, parked in the poller or inside a
// read: every Read must end with io.EOF and the handle be released (a
// Close that freed the handle, or closed the poller's descriptor, under a
// busy reader would crash or hang here).
func TestLiveCloseUnderTraffic(t *testing.T) {
	for i := range 8 {
		r := newLiveRig(t)
		done := make(chan error, 1)
		go func() {
			for {
				_, _, err := r.src.Read()
				if err != nil && !errors.Is(err, ErrTimeout) {
					done <- err
					return
				}
			}
		}()
		sendDone := make(chan struct{})
		go func() {
			defer close(sendDone)
			for j := range 2000 {
				if _, err := fmt.Fprintf(r.conn, "datagram %06d", j); err != nil {
					return
				}
			}
		}()
		time.Sleep(time.Duration(i) * 3 * time.Millisecond)
		r.src.Close()
		select {
		case err := <-done:
			if !errors.Is(err, io.EOF) {
				t.Fatalf("round %d: Read after Close: %v, want io.EOF", i, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: Close under traffic did not end the Read", i)
		}
		<-sendDone
		r.src.mu.Lock()
		released := r.src.released
		r.src.mu.Unlock()
		if !released {
			t.Errorf("round %d: handle not released after Close and the reader's return", i)
		}
	}
}

// TestLiveReadAllocs asserts that reading from the ring, waits included,
// allocates nothing.
func TestLiveReadAllocs(t *testing.T) {
	r := newLiveRig(t)
	const runs = 200
	r.send(t, runs+10)
	r.readPacket(t) // first block in; warm up
	allocs := testing.AllocsPerRun(runs, func() {
		for {
			_, _, err := r.src.Read()
			if err == nil {
				return
			}
			if !errors.Is(err, ErrTimeout) {
				t.Fatal(err)
			}
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per live Read, want 0", allocs)
	}
}
