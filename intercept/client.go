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
	PingInterval time.Duration // keepalive; silence for silentPings intervals drops the link
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
	running                                     atomic.Bool // Run is serving ops
}

type clientOp struct {
	flow rewrite.Tuple
	add  bool
	done chan struct{} // a Flush marker: closed once what was queued before it is written
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

// Flush returns once every Register and Deregister queued before it has
// been taken off the queue and, while the channel is up, written to the
// agent: a stopping copy daemon calls it so that the agent hears of every
// flow it ended. It returns ctx.Err() if ctx ends first, and nil at once
// if Run is not running.
func (c *Client) Flush(ctx context.Context) error {
	if !c.running.Load() {
		return nil
	}
	done := make(chan struct{})
	select {
	case c.ops <- clientOp{done: done}:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
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

// Run keeps the control channel up until ctx is done. The flow set lives
// in its loop, so every reconnect replays what is registered.
func (c *Client) Run(ctx context.Context) error {
	l := newClientLoop(c)
	c.running.Store(true)
	defer c.running.Store(false)
	connc := make(chan *clientConn)
	l.dialNow <- struct{}{} // connect at once
	go c.dialLoop(ctx, l.dialNow, connc)
	ping := time.NewTicker(c.cfg.PingInterval)
	defer ping.Stop()
	for {
		select {
		case <-ctx.Done():
			c.running.Store(false)
			l.stop()
			l.releaseFlushes()
			return nil
		case cc := <-connc:
			l.onConnected(cc)
		case op := <-c.ops:
			l.onOp(op)
		case <-ping.C:
			l.ping()
		case cc := <-l.lost:
			l.drop(cc, errors.New("read failed or agent silent"))
		}
	}
}

const (
	// clientWriteTimeout bounds one write to the agent; a write that
	// fails drops the connection.
	clientWriteTimeout = 5 * time.Second
	// silentPings is how many ping intervals without a frame from the
	// agent drop the connection.
	silentPings = 3
)

// clientLoop is Run's state; only Run's goroutine touches it.
type clientLoop struct {
	c          *Client
	set        map[rewrite.Tuple]struct{} // every live registration: replayed on each connect
	cur        *clientConn                // nil while disconnected
	reg, dereg wire.FlowBatch
	pending    *wire.FlowBatch  // the batch being filled; order across kinds is kept by flushing on a switch
	dialNow    chan struct{}    // to dialLoop: connect (again)
	lost       chan *clientConn // from readLoop: its connection failed
}

func newClientLoop(c *Client) *clientLoop {
	l := &clientLoop{
		c: c, set: make(map[rewrite.Tuple]struct{}),
		dialNow: make(chan struct{}, 1), lost: make(chan *clientConn, 1),
	}
	l.reg.Reset(wire.TypeRegister)
	l.dereg.Reset(wire.TypeDeregister)
	return l
}

// clientConn is one connection to the agent.
type clientConn struct {
	conn     net.Conn
	r        *wire.Reader
	lastRecv atomic.Int64 // unix ns of the last frame read; written by readLoop, read by ping
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
	cc := &clientConn{conn: conn}
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

// onConnected takes a new connection: it replays every registration and
// starts reading.
func (l *clientLoop) onConnected(cc *clientConn) {
	c := l.c
	l.cur = cc
	c.connected.Store(true)
	c.connects.Add(1)
	c.log.Info("intercept agent connected", "agent", c.cfg.Addr, "flows", len(l.set))
	l.pending = nil
	for f := range l.set {
		l.add(&l.reg, f)
	}
	if l.pending != nil {
		l.write(l.pending)
	}
	go c.readLoop(cc, l.lost)
}

// readLoop reads cc until it fails, handing relayed headers to onReply,
// then reports cc lost. (If lost is full, another loss waits there; Run
// still notices this one at a ping: a failed write, or silence.)
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

// onOp applies a Register or Deregister to the flow set and, when
// connected, sends it.
func (l *clientLoop) onOp(op clientOp) {
	if op.done != nil {
		if l.pending != nil {
			l.write(l.pending)
		}
		close(op.done)
		return
	}
	if op.add {
		l.set[op.flow] = struct{}{}
	} else {
		delete(l.set, op.flow)
	}
	l.c.flows.Store(int64(len(l.set)))
	if l.cur == nil {
		return // the next connect replays the set
	}
	if op.add {
		l.add(&l.reg, op.flow)
	} else {
		l.add(&l.dereg, op.flow)
	}
	// Registrations race the SYN they precede: send as soon as nothing
	// else is queued.
	if len(l.c.ops) == 0 && l.pending != nil {
		l.write(l.pending)
	}
}

// add appends f to b, first writing the other kind's batch if that is the
// one being filled, and b itself if it is full.
func (l *clientLoop) add(b *wire.FlowBatch, f rewrite.Tuple) {
	if l.pending != nil && l.pending != b {
		l.write(l.pending)
	}
	l.pending = b
	if !b.Add(f) {
		l.write(b)
		b.Add(f)
	}
}

// write sends b, if connected and not empty, and empties it.
func (l *clientLoop) write(b *wire.FlowBatch) {
	if b.Len() == 0 || l.cur == nil {
		return
	}
	_ = l.cur.conn.SetWriteDeadline(time.Now().Add(clientWriteTimeout))
	n := b.Len()
	if _, err := l.cur.conn.Write(b.Frame()); err != nil {
		l.drop(l.cur, fmt.Errorf("write: %w", err))
		return
	}
	if b.Type() == wire.TypeRegister {
		l.c.registered.Add(uint64(n))
	} else {
		l.c.deregistered.Add(uint64(n))
	}
	b.Reset(b.Type())
}

// ping keeps the connection alive, and drops it when the agent has been
// silent for silentPings intervals.
func (l *clientLoop) ping() {
	if l.cur == nil {
		return
	}
	if time.Since(time.Unix(0, l.cur.lastRecv.Load())) > silentPings*l.c.cfg.PingInterval {
		l.drop(l.cur, errors.New("agent silent"))
		return
	}
	_ = l.cur.conn.SetWriteDeadline(time.Now().Add(clientWriteTimeout))
	if _, err := l.cur.conn.Write(wire.AppendPing(nil, uint64(time.Now().UnixNano()))); err != nil {
		l.drop(l.cur, fmt.Errorf("ping: %w", err))
	}
}

// drop ends cc, if it is still the current connection, and asks dialLoop
// for a new one. Unsent batches go: the next connect replays the set.
func (l *clientLoop) drop(cc *clientConn, why error) {
	if cc != l.cur || l.cur == nil {
		return
	}
	c := l.c
	l.cur.conn.Close()
	l.cur = nil
	c.connected.Store(false)
	c.disconnects.Add(1)
	c.log.Warn("intercept agent connection lost", "agent", c.cfg.Addr, "err", why)
	l.reg.Reset(wire.TypeRegister)
	l.dereg.Reset(wire.TypeDeregister)
	l.pending = nil
	select {
	case l.dialNow <- struct{}{}:
	default:
	}
}

// releaseFlushes lets go every Flush still waiting in the queue: Run
// has stopped.
func (l *clientLoop) releaseFlushes() {
	for {
		select {
		case op := <-l.c.ops:
			if op.done != nil {
				close(op.done)
			}
		default:
			return
		}
	}
}

// stop ends the loop: it sends what is pending and closes the connection,
// telling the agent at once rather than leaving it to notice.
func (l *clientLoop) stop() {
	if l.cur != nil && l.pending != nil {
		l.write(l.pending) // a failed write drops cur
	}
	if l.cur != nil {
		l.cur.conn.Close()
	}
	l.c.connected.Store(false)
}
