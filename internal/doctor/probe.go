package doctor

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/tcpshadow/tcpshadow/rewrite"
)

// ProbeConfig describes one synthetic connection from prod to the shadow.
type ProbeConfig struct {
	Target netip.AddrPort // the shadow's service (a --map target)
	Source netip.AddrPort // the forged client endpoint, in Pool
	Pool   netip.Prefix   // the client pool Source comes from (for advice)
	Assist string         // the assist host's address (for advice)
	ISN    uint32
	// Timeout bounds the wait for the relayed reply (default 3 s); the SYN
	// is sent again once after Resend (default 1 s), as TCP would.
	Timeout, Resend time.Duration
	// Transport is copy's: TransportDirect sends the forged SYN itself,
	// TransportUDP through the tunnel to TunnelPort on the agent's host,
	// which ProbeEnv.Tunnel checks first.
	Transport  string
	TunnelPort int
	// AgentOnShadow: the agent runs on the shadow host (intercept
	// --local): its rules take every reply whatever the routes, so a SYN
	// nobody answers never reached the shadow.
	AgentOnShadow bool
}

// The transports, as copy --transport names them.
const (
	TransportDirect = "direct"
	TransportUDP    = "udp"
)

// ProbeChannel is the control connection the probe registers its flow on
// (*intercept.ProbeConn).
type ProbeChannel interface {
	AgentName() string
	Register(flow rewrite.Tuple, deadline time.Time) error
	Deregister(flow rewrite.Tuple, deadline time.Time) error
	NextReply(deadline time.Time) ([]byte, error)
	Close() error
}

// ProbeEnv is the probe's I/O: tests fake it.
type ProbeEnv struct {
	// Open connects to the agent (intercept.DialProbe).
	Open func(ctx context.Context) (ProbeChannel, error)
	// Send sends one IP packet with whatever source it carries (rawsock).
	Send func(pkt []byte) error
	// Direct opens (and closes) a plain TCP connection from this host's own
	// address to target: it tells a spoofing problem from a path problem.
	Direct func(ctx context.Context, target netip.AddrPort) error
	// Tunnel, with TransportUDP, checks the tunnel with the channel's
	// keys (a probe datagram the agent must answer) and readies Send to
	// use it; an error says why not (tunnelsock.Ping's).
	Tunnel func(ctx context.Context, ch ProbeChannel) error
}

// directTimeout bounds the plain connection made to explain a failure.
const directTimeout = 2 * time.Second

// Probe sends one forged SYN to the shadow through the real path (raw
// send, the shadow's reply route, the agent's capture and relay) and says
// which hop failed. It always resets what it opened on the shadow and
// removes its registration.
func Probe(ctx context.Context, c ProbeConfig, env ProbeEnv) Result {
	if c.Timeout <= 0 {
		c.Timeout = 3 * time.Second
	}
	if c.Resend <= 0 {
		c.Resend = time.Second
	}
	r := Result{Check: "probe " + c.Target.String()}
	ch, err := env.Open(ctx)
	if err != nil {
		a := AgentResult(c.Assist, "", err)
		r.Status, r.Detail = Fail, "cannot register the probe's flow: "+a.Detail
		return r
	}
	defer ch.Close()
	flow := rewrite.TupleOf(c.Source, c.Target)
	if err := ch.Register(flow, time.Now().Add(5*time.Second)); err != nil {
		r.Status, r.Detail = Fail, fmt.Sprintf("agent %q: register the probe's flow: %v", ch.AgentName(), err)
		return r
	}
	defer ch.Deregister(flow, time.Now().Add(time.Second))
	if c.Transport == TransportUDP {
		if err := env.Tunnel(ctx, ch); err != nil {
			return tunnelFailure(c, ch.AgentName(), err)
		}
	}

	syn, err := segment(c.Source, c.Target, c.ISN, 0, rewrite.FlagSYN)
	if err != nil {
		r.Status, r.Detail = Fail, fmt.Sprintf("build the SYN: %v", err)
		return r
	}
	rst, _ := segment(c.Source, c.Target, c.ISN+1, 0, rewrite.FlagRST)
	if err := env.Send(syn); err != nil {
		r.Status, r.Detail = Fail, sendFailure(c, err)
		return r
	}
	// Whatever happens next, free a connection the SYN may have opened.
	defer func() { _ = env.Send(rst) }()

	start := time.Now()
	deadline := start.Add(c.Timeout)
	resendAt := start.Add(c.Resend)
	resent := c.Resend >= c.Timeout
	for {
		wait := deadline
		if !resent {
			wait = resendAt
		}
		hdr, err := ch.NextReply(wait)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if !resent {
				resent = true
				_ = env.Send(syn)
				continue
			}
			break
		}
		if err != nil {
			r.Status, r.Detail = Fail, fmt.Sprintf("lost the agent %q while waiting for the reply: %v", ch.AgentName(), err)
			return r
		}
		var p rewrite.Packet
		if p.DecodeHeader(hdr) != nil || p.Tuple() != flow.Reverse() {
			continue // not the probe's
		}
		r := judgeReply(c, p.TCP(), ch.AgentName(), time.Since(start))
		if c.Transport == TransportUDP && r.Status == OK {
			r.Detail = strings.Replace(r.Detail, "prod → shadow → assist → prod works", "prod → tunnel → shadow → agent → prod works", 1)
		}
		return r
	}
	return noReply(ctx, c, env)
}

// judgeReply says what the shadow's first relayed answer means.
func judgeReply(c ProbeConfig, tcp rewrite.TCP, agent string, took time.Duration) Result {
	r := Result{Check: "probe " + c.Target.String()}
	flags := tcp.Flags()
	switch {
	case flags&(rewrite.FlagSYN|rewrite.FlagACK) == rewrite.FlagSYN|rewrite.FlagACK && tcp.Ack() == c.ISN+1:
		r.Detail = fmt.Sprintf("SYN from %v answered with a SYN-ACK, relayed by agent %q in %v: prod → shadow → assist → prod works",
			c.Source, agent, took.Round(time.Millisecond))
	case flags&rewrite.FlagRST != 0:
		r.Status = Fail
		r.Detail = fmt.Sprintf("the shadow answered with a reset (relayed by agent %q): nothing listens on %v there, "+
			"or a firewall there rejects with a reset; the reply path works", agent, c.Target)
		r.Fix = fmt.Sprintf("on the shadow: ss -ltn 'sport = :%d'", c.Target.Port())
	default:
		r.Status = Warn
		r.Detail = fmt.Sprintf("the shadow answered the SYN with flags %#02x, ack %d (want a SYN-ACK acknowledging %d), relayed by agent %q",
			flags, tcp.Ack(), c.ISN+1, agent)
	}
	return r
}

// noReply explains a SYN nobody answered as far as prod can tell: a plain
// connection from prod's own address separates "the shadow cannot be
// reached or does not listen" from "the forged copy or its reply got lost".
func noReply(ctx context.Context, c ProbeConfig, env ProbeEnv) Result {
	r := Result{Check: "probe " + c.Target.String(), Status: Fail}
	head := fmt.Sprintf("no reply at the assist host within %v", c.Timeout)
	if c.AgentOnShadow || c.Transport == TransportUDP {
		head = fmt.Sprintf("no reply relayed by the agent on the shadow within %v", c.Timeout)
	}
	dctx, cancel := context.WithTimeout(ctx, directTimeout)
	err := env.Direct(dctx, c.Target)
	cancel()
	switch {
	case err == nil && c.Transport == TransportUDP:
		r.Detail = fmt.Sprintf("%s, though the agent answered the tunnel's probe and the shadow accepts plain connections from this host: "+
			"the SYN injected on the shadow from %v got no reply the agent took: its rules for %v are missing or shadowed, "+
			"or rp_filter or an input rule on the shadow drops the pool's sources", head, c.Source.Addr(), c.Pool)
		r.Fix = fmt.Sprintf("on the shadow: tcpshadow doctor --role shadow --local --to %v", c.Pool)
	case err == nil && c.AgentOnShadow:
		r.Detail = fmt.Sprintf("%s, while the shadow accepts plain connections from this host and the agent runs on the shadow, whose rules "+
			"take any reply: the forged SYN from %v never reached the shadow: anti-spoofing on the path drops sources that are not "+
			"this host's own (a cloud's source/destination check, a switch, a CNI), or rp_filter on the shadow does", head, c.Source.Addr())
		r.Fix = tunnelFix(c)
	case err == nil:
		r.Detail = fmt.Sprintf("%s, while the shadow accepts plain connections from this host: the forged SYN from %v was dropped on the way "+
			"(anti-spoofing on the path, which drops sources that are not this host's own, or rp_filter on the shadow), or the shadow's route for %v does not lead to the assist host "+
			"(or the agent's --filter misses replies from port %d)", head, c.Source.Addr(), c.Pool, c.Target.Port())
		r.Fix = fmt.Sprintf("on the shadow: tcpshadow doctor --role shadow --via %s --to %v; where the network drops forged sources: %s",
			c.Assist, c.Pool, tunnelFix(c))
	case errors.Is(err, syscall.ECONNREFUSED):
		r.Detail = fmt.Sprintf("%s, and the shadow refuses plain connections from this host: nothing listens on %v; "+
			"its reset to the forged SYN did not reach the assist host either, so check the shadow's route for %v too",
			head, c.Target, c.Pool)
		r.Fix = fmt.Sprintf("on the shadow: ss -ltn 'sport = :%d'; tcpshadow doctor --role shadow --via %s --to %v", c.Target.Port(), c.Assist, c.Pool)
	default:
		r.Detail = fmt.Sprintf("%s, and this host cannot reach %v with a plain connection either (%v): "+
			"the path to the shadow or its firewall drops traffic from prod; not a spoofing problem", head, c.Target, err)
	}
	return r
}

func sendFailure(c ProbeConfig, err error) string {
	msg := fmt.Sprintf("cannot send the forged SYN from %v: %v", c.Source.Addr(), err)
	if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
		msg += " (this host's OUTPUT rules drop raw sends from forged sources: see nft list ruleset, iptables -S OUTPUT)"
	}
	return msg
}

// segment builds a bare TCP segment; a SYN carries the options a Linux
// client would (MSS, window scale).
func segment(src, dst netip.AddrPort, seq, ack uint32, flags uint8) ([]byte, error) {
	var opts []byte
	if flags&rewrite.FlagSYN != 0 {
		opts = rewrite.AppendWindowScale(rewrite.AppendMSS(nil, 1460), 7)
	}
	s := rewrite.Segment{Src: src, Dst: dst, Seq: seq, Ack: ack, Flags: flags, Window: 65535, Options: opts}
	if flags&rewrite.FlagRST != 0 {
		s.Window = 0
	}
	b := make([]byte, s.Len())
	n, err := s.Put(b)
	return b[:n], err
}
