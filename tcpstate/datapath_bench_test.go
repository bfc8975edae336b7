package tcpstate

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/rewrite"
)

// fakeShadow is a Sender that answers like a shadow server, through the
// engine's reply path: a SYN gets a SYN-ACK, each request an ACK and a
// 100-byte answer. It runs on the worker that sends.
type fakeShadow struct {
	e   *Engine
	buf [128]byte
}

func (f *fakeShadow) Send(pkt []byte) error {
	var p rewrite.Packet
	if p.Decode(pkt) != nil {
		return nil
	}
	tcp := p.TCP()
	flags := tcp.Flags()
	seg := rewrite.Segment{
		Src:    netip.AddrPortFrom(p.DstAddr(), tcp.DstPort()),
		Dst:    netip.AddrPortFrom(p.SrcAddr(), tcp.SrcPort()),
		Window: 65535,
	}
	switch {
	case flags&rewrite.FlagSYN != 0:
		seg.Seq, seg.Ack, seg.Flags = 1000, tcp.Seq()+1, rewrite.FlagSYN|rewrite.FlagACK
	case p.PayloadLen() > 0:
		// The answer's payload is not relayed: only its length, in the
		// IP header, which Put computes from a payload we do not send.
		seg.Seq = tcp.Ack()
		seg.Ack = tcp.Seq() + uint32(p.PayloadLen())
		seg.Flags = rewrite.FlagACK | rewrite.FlagPSH
	default:
		return nil
	}
	n, err := seg.Put(f.buf[:])
	if err != nil {
		return err
	}
	hdr := f.buf[:n]
	if p.PayloadLen() > 0 {
		// The header announces 100 bytes the relay left out.
		ip := rewrite.IPv4(hdr)
		binary.BigEndian.PutUint16(ip[rewrite.IPv4TotalLenOffset:], uint16(n+100))
		ip.SetChecksum(ip.ComputeChecksum())
	}
	f.e.HandleReply(hdr)
	return nil
}

func benchDatapath(b *testing.B, workers int) {
	const flows = 1024
	pool, _ := rewrite.NewPool([]netip.Prefix{tPool}, 0)
	cfg := Config{Maps: []Map{{Local: tProd, Target: tShadow}}, Pool: pool, QueueLen: 4096}
	senders := make([]Sender, workers)
	shadows := make([]*fakeShadow, workers)
	for i := range senders {
		shadows[i] = &fakeShadow{}
		senders[i] = shadows[i]
	}
	e, err := NewEngine(cfg, senders, nopRegistrar{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	for _, s := range shadows {
		s.e = e
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.Run(ctx) }()
	defer func() { cancel(); <-done }()

	// One SYN and one request template per flow.
	type flow struct{ syn, req []byte }
	fl := make([]flow, flows)
	for i := range fl {
		client := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), uint16(20000+i))
		syn := rewrite.Segment{Src: client, Dst: tProd, Seq: tISN, Flags: rewrite.FlagSYN, Window: 65535,
			Options: rewrite.AppendTimestamps(rewrite.AppendMSS(nil, 1460), 1, 0)}
		req := rewrite.Segment{Src: client, Dst: tProd, Flags: rewrite.FlagACK | rewrite.FlagPSH, Window: 502,
			Options: rewrite.AppendTimestamps(nil, 2, 2), Payload: make([]byte, 200)}
		fl[i].syn = make([]byte, syn.Len())
		fl[i].req = make([]byte, req.Len())
		syn.Put(fl[i].syn)
		req.Put(fl[i].req)
	}
	ts := time.Unix(1700000000, 0)
	feed := func(pkt []byte) {
		// Keep the producer from outrunning the workers: shedding would
		// flatter the numbers.
		for busy := true; busy; {
			busy = false
			for _, l := range e.loops {
				if len(l.pkts) > cap(l.pkts)*3/4 || len(l.replies) > cap(l.replies)*3/4 {
					busy = true
				}
			}
			if busy {
				runtime.Gosched()
			}
		}
		e.HandleCaptured(pkt, ts)
	}
	for i := range fl {
		feed(fl[i].syn)
	}
	time.Sleep(50 * time.Millisecond) // handshakes complete
	b.ReportAllocs()
	cpu0 := cpuTime()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		f := &fl[i%flows]
		round := uint32(i / flows)
		binary.BigEndian.PutUint32(f.req[24:], tISN+1+round*200)
		binary.BigEndian.PutUint32(f.req[28:], tProdISN+1+round*100)
		ts = ts.Add(time.Microsecond)
		feed(f.req)
	}
	for _, l := range e.loops { // wait for the workers to drain
		for len(l.pkts) > 0 || len(l.replies) > 0 {
			runtime.Gosched()
		}
	}
	b.StopTimer()
	// The producer yields while the workers catch up: wall time includes
	// that waiting; CPU time of the process is the cost.
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/request")
	st := e.Stats()
	if shed := st.Get(CtrShedQueue) + st.Get(CtrRepliesQueueFull); shed > 0 {
		b.Fatalf("%d packets shed: the benchmark overran the engine", shed)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/request")
	b.ReportMetric(float64(st.Get(CtrRequests))/float64(b.N), "paced/request")
}

// cpuTime returns the process's user and system CPU time in nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

type nopRegistrar struct{}

func (nopRegistrar) Register(rewrite.Tuple)   {}
func (nopRegistrar) Deregister(rewrite.Tuple) {}

// BenchmarkDatapath runs the whole engine — dispatch, workers, pacing,
// the shadow's answers through the reply path — over 1024 keep-alive
// flows, with 1, 2 and 4 workers. Each request is one captured packet in,
// one request and one ACK out, one reply header back.
func BenchmarkDatapath(b *testing.B) {
	for _, w := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("workers=%d", w), func(b *testing.B) { benchDatapath(b, w) })
	}
}
