package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/capture"
	"github.com/tcpshadow/tcpshadow/capture/capturetest"
	"github.com/tcpshadow/tcpshadow/rewrite"
	"github.com/tcpshadow/tcpshadow/tcpstate"
)

// recordingSender keeps a copy of every packet sent to the shadow.
type recordingSender struct {
	mu   sync.Mutex
	pkts [][]byte
}

func (s *recordingSender) Send(pkt []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pkts = append(s.pkts, append([]byte(nil), pkt...))
	return nil
}

func (s *recordingSender) Close() error { return nil }

// sent returns the packets sent so far, decoded.
func (s *recordingSender) sent(t testing.TB) []rewrite.Packet {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]rewrite.Packet, len(s.pkts))
	for i, b := range s.pkts {
		if err := out[i].DecodeHeader(b); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// testHost is a host in memory: captures fed by the test (prodSrc for an
// outbound capture: prod's side), senders that record, listeners on
// loopback, limits left alone.
func testHost(src, prodSrc capture.Source, out *recordingSender, listening chan<- string) host {
	return host{
		openCapture: func(c capture.Config) (capture.Source, error) {
			if c.OutboundOnly {
				if prodSrc == nil {
					return nil, errors.New("no outbound capture in this test")
				}
				return prodSrc, nil
			}
			return src, nil
		},
		openSender: func() (tcpstate.Sender, io.Closer, error) { return out, out, nil },
		listen: func(string) (net.Listener, error) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err == nil {
				listening <- ln.Addr().String()
			}
			return ln, err
		},
		limit: func(int, int64) {},
	}
}

var (
	client = netip.MustParseAddrPort("198.18.0.2:40000")
	shadow = netip.MustParseAddrPort("198.18.1.2:80")
)

// TestRunCopyAndAgent runs both daemons on in-memory captures, connected
// over loopback: a client's SYN is copied to the shadow, the shadow's
// SYN-ACK captured by the agent comes back to the engine, which ACKs it;
// when stopped, the copy daemon resets its sessions and every
// deregistration of their flows reaches the agent before the control
// channel closes; each dump holds what its daemon sent or captured.
func TestRunCopyAndAgent(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	dir := t.TempDir()
	var copyLog, agentLog lockedBuffer

	agentSrc, agentOut, listening := capturetest.New(16), &recordingSender{}, make(chan string, 1)
	acfg := validAgent()
	acfg.Dump.Path = filepath.Join(dir, "agent.pcap")
	agentCtx, stopAgent := context.WithCancel(context.Background())
	defer stopAgent()
	agentErr := make(chan error, 1)
	go func() {
		agentErr <- runAgent(agentCtx, acfg, slog.New(slog.NewTextHandler(&agentLog, nil)), nil, testHost(agentSrc, nil, agentOut, listening))
	}()
	var addr string
	select {
	case addr = <-listening:
	case err := <-agentErr:
		t.Fatalf("agent: %v\n%s", err, agentLog.String())
	}

	copySrc, prodSrc, sent := capturetest.New(16), capturetest.New(16), &recordingSender{}
	ccfg := validCopy()
	ccfg.Client.Addr, ccfg.Client.Secret, ccfg.MaxCPU = addr, acfg.Agent.Secret, 1
	ccfg.Dump.Path = filepath.Join(dir, "copy.pcap")
	ccfg.StatsInterval = 20 * time.Millisecond // to see the registrations written
	copyCtx, stopCopy := context.WithCancel(context.Background())
	defer stopCopy()
	copyErr := make(chan error, 1)
	go func() {
		copyErr <- runCopy(copyCtx, ccfg, slog.New(slog.NewTextHandler(&copyLog, nil)), nil, testHost(copySrc, prodSrc, sent, nil))
	}()
	waitFor(t, "control channel", 10*time.Second, func() bool { return logHas(&copyLog, "intercept agent connected") })

	// The client's SYN, prod's SYN-ACK (its own capture), the client's
	// ACK: prod accepted the connection, the copier opens it.
	prodAddr := netip.MustParseAddrPort("198.18.0.1:80")
	open := func(c netip.AddrPort) {
		copySrc.Push(segment(t, rewrite.Segment{Src: c, Dst: prodAddr, Seq: 1000, Flags: rewrite.FlagSYN, Window: 64240}), time.Now())
		prodSrc.Push(segment(t, rewrite.Segment{Src: prodAddr, Dst: c, Seq: 7000, Ack: 1001, Flags: rewrite.FlagSYN | rewrite.FlagACK, Window: 64240}), time.Now())
	}
	accept := func(c netip.AddrPort) {
		copySrc.Push(segment(t, rewrite.Segment{Src: c, Dst: prodAddr, Seq: 1001, Ack: 7001, Flags: rewrite.FlagACK, Window: 64240}), time.Now())
	}
	open(client) // the two captures run apart: the worker takes them in either order
	accept(client)
	waitFor(t, "SYN sent to the shadow", 5*time.Second, func() bool { return len(sent.sent(t)) == 1 })
	syn := sent.sent(t)[0]
	src, dst := netip.AddrPortFrom(syn.SrcAddr(), syn.TCP().SrcPort()), netip.AddrPortFrom(syn.DstAddr(), syn.TCP().DstPort())
	if src != client || dst != shadow || syn.TCP().Flags() != rewrite.FlagSYN {
		t.Fatalf("sent %v → %v flags %#x, want the client's SYN to the shadow", src, dst, syn.TCP().Flags())
	}
	agentSrc.Push(segment(t, rewrite.Segment{
		Src: shadow, Dst: client, Seq: 5000, Ack: syn.TCP().Seq() + 1, Flags: rewrite.FlagSYN | rewrite.FlagACK, Window: 64240,
	}), time.Now())
	waitFor(t, "ACK of the relayed SYN-ACK", 5*time.Second, func() bool { return len(sent.sent(t)) == 2 })
	if ack := sent.sent(t)[1]; ack.TCP().Flags()&rewrite.FlagACK == 0 || ack.TCP().Ack() != 5001 {
		t.Fatalf("second packet: flags %#x ack %d, want the ACK of the shadow's SYN-ACK", ack.TCP().Flags(), ack.TCP().Ack())
	}

	// More sessions, so that the engine's deregistrations queue up at
	// shutdown: each must still reach the agent.
	const sessions = 200
	for i := 1; i < sessions; i++ {
		open(netip.AddrPortFrom(client.Addr(), client.Port()+uint16(i)))
	}
	for i := 1; i < sessions; i++ {
		accept(netip.AddrPortFrom(client.Addr(), client.Port()+uint16(i)))
	}
	waitFor(t, "every SYN sent", 5*time.Second, func() bool { return len(sent.sent(t)) == sessions+1 })
	// Every registration written before the shutdown deregisters them: a
	// flow registered and deregistered before the writer ran is rightly
	// never written, and would leave both counts short.
	waitFor(t, "every registration written", 5*time.Second, func() bool {
		return logHas(&copyLog, fmt.Sprintf("agent_registrations=%d ", sessions))
	})

	stopCopy()
	if err := <-copyErr; err != nil {
		t.Fatalf("copy daemon: %v\n%s", err, copyLog.String())
	}
	pkts := sent.sent(t)
	if last := pkts[len(pkts)-1]; last.TCP().Flags()&rewrite.FlagRST == 0 {
		t.Errorf("last packet flags %#x, want the shutdown's RST", last.TCP().Flags())
	}
	want := []string{"msg=stopped", fmt.Sprintf("agent_registrations=%d ", sessions), fmt.Sprintf("agent_deregistrations=%d ", sessions),
		fmt.Sprintf("sessions_ended.shutdown=%d ", sessions)}
	if !logHas(&copyLog, want...) {
		t.Errorf("the stop summary lacks %q:\n%s", want, copyLog.String())
	}
	stopAgent()
	if err := <-agentErr; err != nil {
		t.Fatalf("agent: %v\n%s", err, agentLog.String())
	}
	if !logHas(&agentLog, "msg=stopped", "intercept_relayed=1") {
		t.Errorf("the agent's stop summary lacks the relayed reply:\n%s", agentLog.String())
	}
	if got := pcapPackets(t, ccfg.Dump.Path); len(got) != len(pkts) {
		t.Errorf("copy dump holds %d packets, want the %d sent", len(got), len(pkts))
	}
	if got := pcapPackets(t, acfg.Dump.Path); len(got) != 1 {
		t.Errorf("agent dump holds %d packets, want the SYN-ACK captured", len(got))
	}
}
