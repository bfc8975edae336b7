package intercept

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// ClientConfig configures the copy daemon's side of the control channel.
// Zero durations and lengths take DefaultClientConfig's values.
type ClientConfig struct {
	Addr         string // agent host:port
	Name         string
	Secret       []byte
	TLS          *tls.Config   // nil: plain TCP
	DialTimeout  time.Duration // bounds one connect
	RetryMin     time.Duration // first reconnect delay
	RetryMax     time.Duration // longest reconnect delay
	PingInterval time.Duration // keepalive; silence for 3 intervals drops the link
	QueueLen     int           // registrations waiting to be sent
	// Dial connects to Addr; nil uses a TCP dialer. Tests plug in pipes.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
}

// DefaultClientConfig returns the configuration with every default filled
// in (there is none for Addr, Name, Secret, TLS or Dial): what NewClient
// uses for a zero field, and what a command line offers as its flags'
// defaults. The defaults are written here and nowhere else.
func DefaultClientConfig() ClientConfig {
	return ClientConfig{
		DialTimeout:  3 * time.Second,
		RetryMin:     100 * time.Millisecond,
		RetryMax:     2 * time.Second,
		PingInterval: 5 * time.Second,
		QueueLen:     65536,
	}
}

// defaults fills c's zero fields from DefaultClientConfig.
func (c *ClientConfig) defaults() {
	d := DefaultClientConfig()
	if c.DialTimeout == 0 {
		c.DialTimeout = d.DialTimeout
	}
	if c.RetryMin == 0 {
		c.RetryMin = d.RetryMin
	}
	if c.RetryMax == 0 {
		c.RetryMax = d.RetryMax
	}
	if c.PingInterval == 0 {
		c.PingInterval = d.PingInterval
	}
	if c.QueueLen == 0 {
		c.QueueLen = d.QueueLen
	}
}

// ClientStats counts the control channel's work; what could not be done
// while the agent was away is counted, not lost silently.
type ClientStats struct {
	Connected       bool
	Connects        uint64
	Disconnects     uint64
	ConnectFailures uint64
	Registered      uint64 // flow registrations written
	Deregistered    uint64
	QueueFull       uint64 // registrations dropped: queue full
	Flows           int64  // flows currently registered (gauge)
	ReplyFrames     uint64
	Replies         uint64
}

// Client registers flows with the agent and receives their replies. It
// reconnects by itself, replaying every live registration, and never
// blocks its callers: Register and Deregister only queue.
type Client struct {
	cfg     ClientConfig
	log     *slog.Logger
	onReply func(hdr []byte)
	ops     chan clientOp

	connected                                   atomic.Bool
	connects, disconnects, connectFails         atomic.Uint64
	registered, deregistered, queueFull, frames atomic.Uint64
	replies                                     atomic.Uint64
	flows                                       atomic.Int64
}

type clientOp struct {
	flow rewrite.Tuple
	add  bool
}

// NewClient returns a client that calls onReply, from one goroutine at a
// time, with each relayed reply header (valid during the call only).
func NewClient(cfg ClientConfig, onReply func(hdr []byte), log *slog.Logger) *Client {
	cfg.defaults()
	return &Client{cfg: cfg, log: log, onReply: onReply, ops: make(chan clientOp, cfg.QueueLen)}
}

// Register queues a flow registration (copier → shadow direction).
func (c *Client) Register(flow rewrite.Tuple) { c.queue(clientOp{flow: flow, add: true}) }

// Deregister queues a flow de-registration.
func (c *Client) Deregister(flow rewrite.Tuple) { c.queue(clientOp{flow: flow}) }

func (c *Client) queue(op clientOp) {
	select {
	case c.ops <- op:
	default:
		c.queueFull.Add(1)
	}
}

// Connected reports whether the control channel is up.
func (c *Client) Connected() bool { return c.connected.Load() }

// Stats returns a snapshot of the counters.
func (c *Client) Stats() ClientStats {
	return ClientStats{
		Connected: c.connected.Load(), Connects: c.connects.Load(), Disconnects: c.disconnects.Load(),
		ConnectFailures: c.connectFails.Load(), Registered: c.registered.Load(),
		Deregistered: c.deregistered.Load(), QueueFull: c.queueFull.Load(), Flows: c.flows.Load(),
		ReplyFrames: c.frames.Load(), Replies: c.replies.Load(),
	}
}

// clientConn is one connection to the agent.
type clientConn struct {
	conn     net.Conn
	r        *wire.Reader
	lastRecv atomic.Int64
	done     chan struct{}
}

// Run keeps the control channel up until ctx is done. The flow set lives
// here, so every reconnect replays what is registered.
func (c *Client) Run(ctx context.Context) error {
	set := make(map[rewrite.Tuple]struct{})
	connc := make(chan *clientConn)
	lost := make(chan *clientConn, 1)
	dialNow := make(chan struct{}, 1)
	dialNow <- struct{}{}
	go c.dialLoop(ctx, dialNow, connc)

	var cur *clientConn
	var reg, dereg wire.FlowBatch
	reg.Reset(wire.TypeRegister)
	dereg.Reset(wire.TypeDeregister)
	var pending *wire.FlowBatch // the batch being filled; order across kinds is kept by flushing on a switch
	ping := time.NewTicker(c.cfg.PingInterval)
	defer ping.Stop()

	drop := func(cc *clientConn, why error) {
		if cc != cur || cur == nil {
			return
		}
		cur.conn.Close()
		cur = nil
		c.connected.Store(false)
		c.disconnects.Add(1)
		c.log.Warn("intercept agent connection lost", "agent", c.cfg.Addr, "err", why)
		reg.Reset(wire.TypeRegister)
		dereg.Reset(wire.TypeDeregister)
		pending = nil
		select {
		case dialNow <- struct{}{}:
		default:
		}
	}
	write := func(b *wire.FlowBatch) {
		if b.Len() == 0 || cur == nil {
			return
		}
		_ = cur.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		n := b.Len()
		if _, err := cur.conn.Write(b.Frame()); err != nil {
			drop(cur, fmt.Errorf("write: %w", err))
			return
		}
		if b.Type() == wire.TypeRegister {
			c.registered.Add(uint64(n))
		} else {
			c.deregistered.Add(uint64(n))
		}
		b.Reset(b.Type())
	}
	add := func(b *wire.FlowBatch, f rewrite.Tuple) {
		if pending != nil && pending != b {
			write(pending)
		}
		pending = b
		if !b.Add(f) {
			write(b)
			b.Add(f)
		}
	}

	for {
		select {
		case <-ctx.Done():
			if cur != nil {
				// Tell the agent at once rather than leave it to notice.
				if pending != nil {
					write(pending)
				}
				cur.conn.Close()
			}
			c.connected.Store(false)
			return nil
		case op := <-c.ops:
			if op.add {
				set[op.flow] = struct{}{}
			} else {
				delete(set, op.flow)
			}
			c.flows.Store(int64(len(set)))
			if cur != nil {
				if op.add {
					add(&reg, op.flow)
				} else {
					add(&dereg, op.flow)
				}
				// Registrations race the SYN they precede: send as soon
				// as nothing else is queued.
				if len(c.ops) == 0 && pending != nil {
					write(pending)
				}
			}
		case cc := <-connc:
			cur = cc
			c.connected.Store(true)
			c.connects.Add(1)
			c.log.Info("intercept agent connected", "agent", c.cfg.Addr, "flows", len(set))
			pending = nil
			for f := range set {
				add(&reg, f)
			}
			if pending != nil {
				write(pending)
			}
			go c.readLoop(cc, lost)
		case cc := <-lost:
			drop(cc, errors.New("read failed or agent silent"))
		case <-ping.C:
			if cur == nil {
				continue
			}
			if time.Since(time.Unix(0, cur.lastRecv.Load())) > 3*c.cfg.PingInterval {
				drop(cur, errors.New("agent silent"))
				continue
			}
			_ = cur.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := cur.conn.Write(wire.AppendPing(nil, uint64(time.Now().UnixNano()))); err != nil {
				drop(cur, fmt.Errorf("ping: %w", err))
			}
		}
	}
}

// dialLoop connects whenever asked, with exponential backoff, forever:
// the channel never gives up for good.
func (c *Client) dialLoop(ctx context.Context, dialNow <-chan struct{}, connc chan<- *clientConn) {
	delay := c.cfg.RetryMin
	for {
		select {
		case <-ctx.Done():
			return
		case <-dialNow:
		}
		for {
			cc, err := c.dial(ctx)
			if err == nil {
				select {
				case connc <- cc:
					delay = c.cfg.RetryMin
				case <-ctx.Done():
					cc.conn.Close()
					return
				}
				break
			}
			if ctx.Err() != nil {
				return
			}
			if c.connectFails.Add(1) == 1 || delay == c.cfg.RetryMax {
				c.log.Warn("cannot reach intercept agent; retrying", "agent", c.cfg.Addr, "err", err, "retry_in", delay)
			}
			select {
			case <-time.After(delay):
			case <-ctx.Done():
				return
			}
			delay = min(2*delay, c.cfg.RetryMax)
		}
	}
}

func (c *Client) dial(ctx context.Context) (*clientConn, error) {
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
	if conn, err = tlsClient(ctx, conn, c.cfg.TLS); err != nil {
		return nil, fmt.Errorf("%s: %w", c.cfg.Addr, err)
	}
	cc := &clientConn{conn: conn, done: make(chan struct{})}
	r := wire.NewReader(conn)
	if _, err := handshake(conn, r, wire.RoleCopier, c.cfg.Name, c.cfg.Secret); err != nil {
		err = refusalBehind(conn, err)
		conn.Close()
		return nil, fmt.Errorf("handshake with %s: %w", c.cfg.Addr, err)
	}
	cc.lastRecv.Store(time.Now().UnixNano())
	cc.r = r
	return cc, nil
}

func (c *Client) readLoop(cc *clientConn, lost chan<- *clientConn) {
	defer func() {
		select {
		case lost <- cc:
		default:
		}
	}()
	onReply := func(_ int64, hdr []byte) { c.onReply(hdr) }
	for {
		typ, p, err := cc.r.Next()
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
