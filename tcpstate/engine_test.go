package tcpstate

import (
	"context"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/rewrite"
)

// TestEngineRunsConcurrently drives a running engine — capture dispatch,
// two worker goroutines, replies from the fake shadow on the workers'
// goroutines, stats read from a third — so that the race detector sees
// the real concurrency; then a shutdown resets every session.
func TestEngineRunsConcurrently(t *testing.T) {
	pool, _ := rewrite.NewPool([]netip.Prefix{tPool}, 0)
	shadows := []*fakeShadow{{}, {}}
	e, err := NewEngine(Config{Maps: []Map{{Local: tProd, Target: tShadow}}, Pool: pool},
		[]Sender{shadows[0], shadows[1]}, nopRegistrar{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range shadows {
		s.e = e
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.Run(ctx) }()
	stop := make(chan struct{})
	go func() { // a metrics scraper
		for {
			select {
			case <-stop:
				return
			default:
				_ = e.Stats()
				time.Sleep(time.Millisecond)
			}
		}
	}()
	defer close(stop)

	const flows, rounds = 64, 20
	ts := time.Unix(1700000000, 0)
	// One capture goroutine per direction, as the copy daemon runs them.
	fromProd := e.NewInput()
	feed := func(in *Input, seg rewrite.Segment) {
		b := make([]byte, seg.Len())
		seg.Put(b)
		in.Handle(b, ts)
	}
	clientOf := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(2 + i)}), uint16(30000+i))
	}
	for i := 0; i < flows; i++ {
		client := clientOf(i)
		feed(e.input, rewrite.Segment{Src: client, Dst: tProd, Seq: tISN, Flags: rewrite.FlagSYN, Window: 65535})
		feed(fromProd, rewrite.Segment{Src: tProd, Dst: client, Seq: tProdISN, Ack: tISN + 1, Flags: rewrite.FlagSYN | rewrite.FlagACK, Window: 65535})
	}
	// The clients acknowledge prod's SYN-ACKs once the workers have seen
	// them (the two goroutines' order is the kernel's in a real capture).
	waitEngine(t, e, "prod's SYN-ACKs", func(s Snapshot) bool { return s.Get(CtrFromProd) >= flows && s.States[stateProdOpening] == flows })
	for i := 0; i < flows; i++ {
		feed(e.input, rewrite.Segment{Src: clientOf(i), Dst: tProd, Seq: tISN + 1, Ack: tProdISN + 1, Flags: rewrite.FlagACK, Window: 502})
	}
	waitEngine(t, e, "handshakes", func(s Snapshot) bool { return s.Get(CtrReplies) >= flows })
	for r := 0; r < rounds; r++ {
		for i := 0; i < flows; i++ {
			client := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(2 + i)}), uint16(30000+i))
			req := rewrite.Segment{Src: client, Dst: tProd, Flags: rewrite.FlagACK | rewrite.FlagPSH, Window: 502, Payload: make([]byte, 50)}
			b := make([]byte, req.Len())
			req.Put(b)
			binary.BigEndian.PutUint32(b[24:], tISN+1+uint32(r*50))
			binary.BigEndian.PutUint32(b[28:], tProdISN+1+uint32(r*100))
			e.HandleCaptured(b, ts)
			// Prod acknowledges it, answering with 100 bytes.
			feed(fromProd, rewrite.Segment{Src: tProd, Dst: client, Seq: tProdISN + 1 + uint32(r*100),
				Ack: tISN + 1 + uint32((r+1)*50), Flags: rewrite.FlagACK | rewrite.FlagPSH, Window: 1000, Payload: make([]byte, 100)})
		}
		// Each round waits for the previous one's answers, as a client
		// waits for prod's: pacing then lets every request through.
		waitEngine(t, e, "a round of requests", func(s Snapshot) bool {
			return s.Get(CtrReplies) >= uint64(flows*(r+2))
		})
	}
	st := e.Stats()
	if st.Get(CtrSessionsStarted) != flows || st.Active != flows || st.Get(CtrShedQueue) != 0 {
		t.Fatalf("started %d, active %d, shed %d", st.Get(CtrSessionsStarted), st.Active, st.Get(CtrShedQueue))
	}
	cancel()
	<-done
	st = e.Stats()
	if st.Ended[EndShutdown] != flows || st.Active != 0 || st.Buffered != 0 {
		t.Fatalf("after shutdown: ended %d by shutdown, %d active, %d bytes buffered", st.Ended[EndShutdown], st.Active, st.Buffered)
	}
}

func waitEngine(t *testing.T, e *Engine, what string, cond func(Snapshot) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if cond(e.Stats()) {
			return
		}
		if time.Now().After(deadline) {
			st := e.Stats()
			t.Fatalf("timed out waiting for %s: %+v", what, st.Counters)
		}
		time.Sleep(time.Millisecond)
	}
}
