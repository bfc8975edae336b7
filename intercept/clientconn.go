package intercept

// The copy daemon's connection to the agent: dialling with backoff, the
// handshake's result, and reading what the agent relays.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"time"

	"github.com/tcpshadow/tcpshadow/intercept/tunnel"
	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/internal/rawconn"
)

// clientConn is one connection to the agent.
type clientConn struct {
	conn     net.Conn
	r        *wire.Reader
	seal     *wire.Sealer // nil: frames are not sealed
	tunnel   *tunnel.Sealer
	agent    string       // the agent's name
	lastRecv atomic.Int64 // unix ns of the last frame read; written by readLoop, read by ping
}

// dialLoop connects whenever asked, forever: the channel never gives up
// for good. The delay before a dial doubles with every failure and every
// connection that did not live StableAfter, up to RetryMax, and is
// jittered, so that a flapping agent or network is not hammered in step by
// every copier; only a connection that lived resets it.
func (c *Client) dialLoop(ctx context.Context, redial <-chan time.Duration, connc chan<- *clientConn) {
	delay := c.cfg.RetryMin
	var failLog rateLimit
	failLog.every = connLogEvery
	for {
		var lived time.Duration
		select {
		case <-ctx.Done():
			return
		case lived = <-redial:
		}
		var pause time.Duration // the first connect is at once
		if lived >= 0 {
			if lived >= c.cfg.StableAfter {
				delay = c.cfg.RetryMin
			}
			pause, delay = jitter(delay), min(2*delay, c.cfg.RetryMax)
		}
		for {
			if pause > 0 {
				select {
				case <-c.wait(pause):
				case <-ctx.Done():
					return
				}
			}
			cc, err := c.dial(ctx)
			if err == nil {
				select {
				case connc <- cc:
				case <-ctx.Done():
					cc.conn.Close()
					return
				}
				break
			}
			if ctx.Err() != nil {
				return
			}
			c.connectFails.Add(1)
			pause, delay = jitter(delay), min(2*delay, c.cfg.RetryMax)
			if ok, suppressed := failLog.allow(time.Now()); ok {
				c.log.Warn("cannot reach intercept agent; retrying", "agent", c.cfg.Addr, "err", err,
					"retry_in", pause.Round(time.Millisecond), "suppressed", suppressed)
			}
		}
	}
}

// jitter spreads d over [d/2, 3d/2).
func jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d+1)
}

// ErrReplyPrefix is a ClientConfig.ReplyPrefix outside
// 0..wire.MaxReplyPrefix: no agent would accept it.
var ErrReplyPrefix = errors.New("reply prefix out of range")

func (c *Client) dial(ctx context.Context) (*clientConn, error) {
	if c.cfg.ReplyPrefix < 0 || c.cfg.ReplyPrefix > wire.MaxReplyPrefix {
		return nil, fmt.Errorf("%w: %d bytes, want 0..%d", ErrReplyPrefix, c.cfg.ReplyPrefix, wire.MaxReplyPrefix)
	}
	dial := c.cfg.Dial
	if dial == nil {
		d := net.Dialer{KeepAlive: 30 * time.Second}
		dial = func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	}
	dctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	conn, err := dial(dctx, c.cfg.Addr)
	cancel()
	if err != nil {
		return nil, err
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	conn = rawconn.Wrap(conn) // replies read wake no sysmon (package rawconn)
	deadline := time.Now().Add(handshakeTimeout)
	if conn, err = tlsClient(ctx, conn, c.cfg.TLS, deadline); err != nil {
		return nil, fmt.Errorf("%s: %w", c.cfg.Addr, err)
	}
	r := wire.NewHandshakeReader(conn)
	s, err := handshake(conn, r, handshakeConfig{
		role: wire.RoleCopier, name: c.cfg.Name, secret: c.cfg.Secret,
		flowIdle: c.cfg.FlowIdle, pools: c.cfg.Pools, replyPrefix: uint16(c.cfg.ReplyPrefix), h2Ports: c.cfg.H2Ports, deadline: deadline,
	})
	if err != nil {
		err = refusalBehind(conn, err)
		conn.Close()
		return nil, fmt.Errorf("handshake with %s: %w", c.cfg.Addr, err)
	}
	r.Resize(clientReadBuf, wire.MaxFrameLen)
	cc := &clientConn{conn: conn, r: r, seal: s.seal, agent: s.name}
	if c.cfg.Tunnel != nil {
		if cc.tunnel, _, err = s.tunnelKeys(wire.RoleCopier); err != nil {
			conn.Close()
			return nil, err
		}
	}
	cc.lastRecv.Store(time.Now().UnixNano())
	return cc, nil
}

// readLoop reads cc until it fails, handing relayed replies to onReply,
// then reports cc lost. (If lost is full, another loss waits there; Run
// still notices this one at a ping: a failed write, or silence.)
func (c *Client) readLoop(cc *clientConn, lost chan<- *clientConn) {
	defer func() {
		select {
		case lost <- cc:
		default:
		}
	}()
	onReply := func(_ int64, reply []byte) { c.onReply(reply) }
	for {
		typ, p, err := cc.r.Next()
		if errors.Is(err, wire.ErrBadMAC) {
			c.badFrames.Add(1) // injected or corrupted: skipped, the session goes on
			continue
		}
		if err != nil {
			return
		}
		cc.lastRecv.Store(time.Now().UnixNano())
		switch typ {
		case wire.TypeReplies:
			n, err := wire.ForEachReply(p, onReply)
			if err != nil {
				c.log.Warn("bad replies frame from agent", "err", err)
				return
			}
			c.frames.Add(1)
			c.replies.Add(uint64(n))
		case wire.TypePong, wire.TypePing:
		case wire.TypeError:
			c.log.Warn("intercept agent reported an error", "err", peerErr(p))
			return
		default:
			c.log.Warn("unexpected frame from agent", "type", typ)
			return
		}
	}
}
