package doctor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/intercept"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// fakeChannel is the agent side of a probe: replies the fake shadow
// produces arrive on replies.
type fakeChannel struct {
	replies      chan []byte
	registered   []rewrite.Tuple
	deregistered []rewrite.Tuple
	closed       bool
}

func (f *fakeChannel) AgentName() string { return "assist-1" }
func (f *fakeChannel) Register(t rewrite.Tuple, _ time.Time) error {
	f.registered = append(f.registered, t)
	return nil
}
func (f *fakeChannel) Deregister(t rewrite.Tuple, _ time.Time) error {
	f.deregistered = append(f.deregistered, t)
	return nil
}
func (f *fakeChannel) Close() error { f.closed = true; return nil }
func (f *fakeChannel) NextReply(deadline time.Time) ([]byte, error) {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case h := <-f.replies:
		return h, nil
	case <-t.C:
		return nil, os.ErrDeadlineExceeded
	}
}

// probeRig runs Probe against a fake shadow: answer, when set, builds the
// relayed reply to each SYN sent (nil: silence).
type probeRig struct {
	t       *testing.T
	cfg     ProbeConfig
	ch      *fakeChannel
	sent    []rewrite.Packet
	sendErr error
	answer  func(syn rewrite.Packet) []byte
	direct  error
	openErr error
	tunnel  error // what the tunnel's check returns, with TransportUDP
	tunnels int   // times it was asked
}

func newProbeRig(t *testing.T) *probeRig {
	return &probeRig{
		t: t,
		cfg: ProbeConfig{
			Target: netip.MustParseAddrPort("198.18.1.2:80"), Source: netip.MustParseAddrPort("198.19.4.5:40000"),
			Pool: netip.MustParsePrefix("198.19.0.0/16"), Assist: "198.18.1.3", ISN: 0xfffffff0,
			Timeout: 80 * time.Millisecond, Resend: 20 * time.Millisecond,
		},
		ch: &fakeChannel{replies: make(chan []byte, 8)},
	}
}

func (r *probeRig) run() Result {
	env := ProbeEnv{
		Open: func(context.Context) (ProbeChannel, error) {
			if r.openErr != nil {
				return nil, r.openErr
			}
			return r.ch, nil
		},
		Send: func(pkt []byte) error {
			if r.sendErr != nil {
				return r.sendErr
			}
			var p rewrite.Packet
			if err := p.Decode(append([]byte(nil), pkt...)); err != nil || !p.ChecksumValid() {
				r.t.Fatalf("probe sent a bad packet %x: %v", pkt, err)
			}
			r.sent = append(r.sent, p)
			if r.answer != nil && p.TCP().Flags() == rewrite.FlagSYN {
				r.ch.replies <- r.answer(p)
			}
			return nil
		},
		Direct: func(context.Context, netip.AddrPort) error { return r.direct },
		Tunnel: func(context.Context, ProbeChannel) error { r.tunnels++; return r.tunnel },
	}
	res := Probe(context.Background(), r.cfg, env)
	r.t.Logf("%v", res)
	return res
}

// flags returns the TCP flags of what the probe sent, in order.
func (r *probeRig) flags() []uint8 {
	var out []uint8
	for _, p := range r.sent {
		out = append(out, p.TCP().Flags())
	}
	return out
}

// reply builds the header the agent would relay for the shadow's answer
// to a segment of tup.
func reply(t *testing.T, tup rewrite.Tuple, flags uint8, ack uint32) []byte {
	t.Helper()
	s := rewrite.Segment{Src: tup.DstAddrPort(), Dst: tup.SrcAddrPort(), Seq: 77, Ack: ack, Flags: flags, Window: 100}
	b := make([]byte, s.Len())
	if _, err := s.Put(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func expectResult(t *testing.T, r Result, status Status, words ...string) {
	t.Helper()
	if r.Status != status {
		t.Errorf("status %v, want %v: %v", r.Status, status, r)
	}
	for _, w := range words {
		if !strings.Contains(r.String(), w) {
			t.Errorf("%q does not say %q", r.String(), w)
		}
	}
}

func TestProbeSynAckIsOKAndReset(t *testing.T) {
	r := newProbeRig(t)
	r.answer = func(syn rewrite.Packet) []byte {
		return reply(t, syn.Tuple(), rewrite.FlagSYN|rewrite.FlagACK, syn.TCP().Seq()+1)
	}
	expectResult(t, r.run(), OK, "SYN-ACK", `agent "assist-1"`)
	want := []uint8{rewrite.FlagSYN, rewrite.FlagRST}
	if got := r.flags(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("sent flags %v, want SYN then RST %v", got, want)
	}
	syn, rst := r.sent[0], r.sent[1]
	if syn.SrcAddr() != r.cfg.Source.Addr() || syn.TCP().SrcPort() != r.cfg.Source.Port() ||
		syn.DstAddr() != r.cfg.Target.Addr() || syn.TCP().DstPort() != r.cfg.Target.Port() || syn.TCP().Seq() != r.cfg.ISN {
		t.Errorf("SYN %v seq %d, want %v → %v seq %d", syn.Tuple(), syn.TCP().Seq(), r.cfg.Source, r.cfg.Target, r.cfg.ISN)
	}
	// The reset must be in the shadow's window (RFC 9293 3.10.7.3): the
	// SYN's sequence number plus one, wrapping.
	if rst.TCP().Seq() != r.cfg.ISN+1 || rst.Tuple() != syn.Tuple() {
		t.Errorf("RST %v seq %d, want the SYN's tuple and seq %d", rst.Tuple(), rst.TCP().Seq(), r.cfg.ISN+1)
	}
	flow := rewrite.TupleOf(r.cfg.Source, r.cfg.Target)
	if len(r.ch.registered) != 1 || r.ch.registered[0] != flow || len(r.ch.deregistered) != 1 || !r.ch.closed {
		t.Errorf("registered %v, deregistered %v, closed %v: want the flow %v registered, then removed", r.ch.registered, r.ch.deregistered, r.ch.closed, flow)
	}
}

func TestProbeResetMeansNothingListens(t *testing.T) {
	r := newProbeRig(t)
	r.answer = func(syn rewrite.Packet) []byte {
		return reply(t, syn.Tuple(), rewrite.FlagRST|rewrite.FlagACK, syn.TCP().Seq()+1)
	}
	expectResult(t, r.run(), Fail, "answered with a reset", "nothing listens on 198.18.1.2:80", "fix: on the shadow: ss -ltn 'sport = :80'")
}

func TestProbeOddAnswerWarns(t *testing.T) {
	r := newProbeRig(t)
	r.answer = func(syn rewrite.Packet) []byte { return reply(t, syn.Tuple(), rewrite.FlagACK, 5) }
	expectResult(t, r.run(), Warn, "flags 0x10")
}

func TestProbeSilence(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	timeout := fmt.Errorf("dial tcp 198.18.1.2:80: %w", context.DeadlineExceeded)
	tests := []struct {
		name   string
		direct error
		words  []string
	}{
		{"PlainConnectionsWork", nil, []string{"no reply at the assist host", "accepts plain connections", "dropped on the way",
			"route for 198.19.0.0/16", "fix: on the shadow: tcpshadow doctor --role shadow --via 198.18.1.3 --to 198.19.0.0/16"}},
		{"PlainConnectionsRefused", refused, []string{"refuses plain connections", "nothing listens on 198.18.1.2:80"}},
		{"ShadowUnreachable", timeout, []string{"cannot reach 198.18.1.2:80 with a plain connection", "not a spoofing problem"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newProbeRig(t)
			r.direct = tt.direct
			expectResult(t, r.run(), Fail, tt.words...)
			// SYN, the one resend TCP would make, then the reset that frees
			// a connection the SYN may have opened after all.
			want := []uint8{rewrite.FlagSYN, rewrite.FlagSYN, rewrite.FlagRST}
			if got := r.flags(); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("sent flags %v, want %v", got, want)
			}
		})
	}
}

func TestProbeIgnoresOtherFlows(t *testing.T) {
	r := newProbeRig(t)
	r.answer = func(syn rewrite.Packet) []byte {
		other := syn.Tuple()
		other.SrcPort++ // another forged client's flow
		return reply(t, other, rewrite.FlagSYN|rewrite.FlagACK, syn.TCP().Seq()+1)
	}
	expectResult(t, r.run(), Fail, "no reply")
}

func TestProbeSendRefused(t *testing.T) {
	r := newProbeRig(t)
	r.sendErr = syscall.EPERM
	expectResult(t, r.run(), Fail, "cannot send the forged SYN from 198.19.4.5", "OUTPUT rules")
	if len(r.ch.deregistered) != 1 || !r.ch.closed {
		t.Errorf("registration left behind: deregistered %v, closed %v", r.ch.deregistered, r.ch.closed)
	}
}

func TestProbeAgentUnreachable(t *testing.T) {
	r := newProbeRig(t)
	r.openErr = fmt.Errorf("%w: %w", intercept.ErrUnreachable, errors.New("dial tcp 198.18.1.3:36524: connect: connection refused"))
	expectResult(t, r.run(), Fail, "cannot register the probe's flow: agent unreachable", "connection refused")
	if len(r.sent) != 0 {
		t.Errorf("sent %d packets without a registered flow", len(r.sent))
	}
}
