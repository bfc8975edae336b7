package intercept

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/tcpshadow/tcpshadow/intercept/tunnel"
	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// ErrUnreachable wraps the dial error when a probe cannot reach the agent.
var ErrUnreachable = errors.New("agent unreachable")

// probeDialTimeout bounds a probe's connect when ctx has no earlier deadline.
const probeDialTimeout = 3 * time.Second

// ProbeConfig configures a diagnostic connection to an agent.
type ProbeConfig struct {
	Addr   string // agent host:port
	Name   string // announced in the hello
	Secret []byte
	TLS    *tls.Config // nil: plain TCP
	// Pools are announced as a copier's: the agent refuses registrations
	// outside them.
	Pools []wire.Pool
	// Dial connects to Addr; nil uses a TCP dialer. Tests plug in pipes.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
}

// ProbeConn is a short-lived control connection for diagnostics (tcpshadow
// doctor): the copier's handshake, synchronous registrations, and the
// relayed reply headers handed to the caller one by one. Unlike Client it
// never reconnects. One goroutine reads the connection (so a wait that
// times out leaves the stream intact); the methods are for one caller
// goroutine at a time.
type ProbeConn struct {
	conn  net.Conn
	agent string
	seal  *wire.Sealer // nil: frames are not sealed; under wmu
	// tunnelSeal and tunnelOpen are the session's tunnel keys; nil
	// without a secret.
	tunnelSeal *tunnel.Sealer
	tunnelOpen *tunnel.Opener
	token      uint64      // last ping token; the caller's goroutine only
	replies    chan []byte // relayed headers, copies; full: dropped
	pongs      chan uint64
	done       chan struct{} // closed when the read loop ends
	err        error         // why it ended; read only after done is closed

	wmu sync.Mutex // serialises writes: the caller's and the read loop's pongs
}

// probeQueue bounds the relayed headers waiting for NextReply: a probe
// registers one flow and expects a handful.
const probeQueue = 256

// DialProbe connects to the agent and runs the copier's side of the
// handshake. A dial failure is returned wrapped in ErrUnreachable; a
// refusal by either side (version, authentication, allowlist) carries a
// *wire.PeerError in its chain. ctx bounds the dial and the handshake.
func DialProbe(ctx context.Context, cfg ProbeConfig) (*ProbeConn, error) {
	dial := cfg.Dial
	if dial == nil {
		d := net.Dialer{Timeout: probeDialTimeout}
		dial = func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	}
	conn, err := dial(ctx, cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	deadline := time.Now().Add(handshakeTimeout)
	if conn, err = tlsClient(ctx, conn, cfg.TLS, deadline); err != nil {
		return nil, fmt.Errorf("handshake with %s: %w", cfg.Addr, err)
	}
	// The handshake sets its own deadlines; closing the connection is the
	// only way to make it honour ctx as well.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	r := wire.NewHandshakeReader(conn)
	s, err := handshake(conn, r, handshakeConfig{
		role: wire.RoleCopier, name: cfg.Name, secret: cfg.Secret, pools: cfg.Pools, deadline: deadline,
	})
	if !stop() || (err != nil && ctx.Err() != nil) {
		conn.Close()
		return nil, fmt.Errorf("handshake with %s: %w", cfg.Addr, ctx.Err())
	}
	if err != nil {
		err = refusalBehind(conn, err)
		conn.Close()
		return nil, fmt.Errorf("handshake with %s: %w", cfg.Addr, err)
	}
	r.Resize(clientReadBuf, wire.MaxFrameLen)
	p := &ProbeConn{
		conn: conn, agent: s.name, seal: s.seal,
		replies: make(chan []byte, probeQueue), pongs: make(chan uint64, 1), done: make(chan struct{}),
	}
	p.tunnelSeal, p.tunnelOpen, _ = s.tunnelKeys(wire.RoleCopier) // none without a secret
	go p.readLoop(r)
	return p, nil
}

// TunnelKeys returns the session's tunnel keys (copy --transport udp's):
// what seals the probe's datagrams and opens the agent's answers. Both
// are nil when the session authenticated nothing.
func (p *ProbeConn) TunnelKeys() (*tunnel.Sealer, *tunnel.Opener) { return p.tunnelSeal, p.tunnelOpen }

// Probe connects to the agent as cfg says, completes the handshake and
// one ping round trip, and returns the name the agent announced. Errors
// are those of DialProbe and Ping.
func Probe(ctx context.Context, cfg ProbeConfig) (string, error) {
	p, err := DialProbe(ctx, cfg)
	if err != nil {
		return "", err
	}
	defer p.Close()
	deadline := time.Now().Add(probeDialTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := p.Ping(deadline); err != nil {
		return p.agent, err
	}
	return p.agent, nil
}

// AgentName returns the name the agent announced in its hello.
func (p *ProbeConn) AgentName() string { return p.agent }

// Ping sends a ping and waits until deadline for its pong.
func (p *ProbeConn) Ping(deadline time.Time) error {
	p.token++
	if err := p.write(wire.AppendPing(nil, p.token), deadline); err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	for {
		select {
		case tok := <-p.pongs:
			if tok == p.token {
				return nil
			}
		case <-p.done:
			return fmt.Errorf("wait for pong: %w", p.err)
		case <-t.C:
			return fmt.Errorf("wait for pong: %w", os.ErrDeadlineExceeded)
		}
	}
}

// Register registers flow (forged client → shadow) and returns once the
// agent has answered a ping sent after it, so the registration has been
// read. A reply that still beats it is parked by the agent (scenario 1).
func (p *ProbeConn) Register(flow rewrite.Tuple, deadline time.Time) error {
	if !wire.FlowOK(flow) {
		return fmt.Errorf("register %v: mixed address families", flow)
	}
	if err := p.write(wire.AppendFlows(nil, wire.TypeRegister, []rewrite.Tuple{flow}), deadline); err != nil {
		return fmt.Errorf("register: %w", err)
	}
	return p.Ping(deadline)
}

// Deregister removes flow's registration.
func (p *ProbeConn) Deregister(flow rewrite.Tuple, deadline time.Time) error {
	if !wire.FlowOK(flow) {
		return fmt.Errorf("deregister %v: mixed address families", flow)
	}
	if err := p.write(wire.AppendFlows(nil, wire.TypeDeregister, []rewrite.Tuple{flow}), deadline); err != nil {
		return fmt.Errorf("deregister: %w", err)
	}
	return nil
}

// NextReply returns the next relayed reply header (IP and TCP header, a
// copy the caller owns), waiting until deadline; when none arrives it
// returns an error matching os.ErrDeadlineExceeded, and the connection
// stays usable.
func (p *ProbeConn) NextReply(deadline time.Time) ([]byte, error) {
	select {
	case h := <-p.replies:
		return h, nil
	default:
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case h := <-p.replies:
		return h, nil
	case <-p.done:
		select {
		case h := <-p.replies: // read before the connection ended
			return h, nil
		default:
		}
		return nil, p.err
	case <-t.C:
		return nil, os.ErrDeadlineExceeded
	}
}

// Close closes the connection (the agent drops the probe's
// registrations) and waits for the read loop to end.
func (p *ProbeConn) Close() error {
	err := p.conn.Close()
	<-p.done
	return err
}

func (p *ProbeConn) write(b []byte, deadline time.Time) error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	if err := p.conn.SetWriteDeadline(deadline); err != nil {
		return err
	}
	if p.seal != nil {
		b = p.seal.Seal(b)
	}
	_, err := p.conn.Write(b)
	return err
}

// readLoop reads frames until the connection fails: it queues relayed
// headers, hands pongs to Ping, answers pings, and turns an Error frame
// into a *wire.PeerError.
func (p *ProbeConn) readLoop(r *wire.Reader) {
	defer close(p.done)
	for {
		typ, payload, err := r.Next()
		if errors.Is(err, wire.ErrBadMAC) {
			continue // not the agent's: skipped
		}
		if err != nil {
			p.err = err
			return
		}
		switch typ {
		case wire.TypeReplies:
			if _, err := wire.ForEachReply(payload, func(_ int64, hdr []byte) {
				select {
				case p.replies <- append([]byte(nil), hdr...):
				default:
				}
			}); err != nil {
				p.err = fmt.Errorf("bad replies frame from agent: %w", err)
				return
			}
		case wire.TypePong:
			tok, err := wire.ParsePong(payload)
			if err != nil {
				p.err = fmt.Errorf("bad pong from agent: %w", err)
				return
			}
			select {
			case <-p.pongs: // only the latest matters
			default:
			}
			p.pongs <- tok
		case wire.TypePing:
			tok, err := wire.ParsePing(payload)
			if err != nil {
				p.err = fmt.Errorf("bad ping from agent: %w", err)
				return
			}
			// Best effort: a pong the agent misses only costs it a keepalive.
			_ = p.write(wire.AppendPong(nil, tok), time.Now().Add(time.Second))
		case wire.TypeError:
			p.err = peerErr(payload)
			return
		default:
			p.err = fmt.Errorf("unexpected %v frame from agent", typ)
			return
		}
	}
}
