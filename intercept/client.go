package intercept

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tcpshadow/tcpshadow/intercept/tunnel"
	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// ClientConfig configures the copy daemon's side of the control channel.
// Zero durations take DefaultClientConfig's values.
type ClientConfig struct {
	Addr   string // agent host:port
	Name   string
	Secret []byte
	TLS    *tls.Config // nil: plain TCP (frames are then sealed with the secret's session keys)
	// Pools are the client pools the copier forges from, announced in its
	// hello: the agent refuses registrations outside them. A copier that
	// forges nothing announces the whole address space of each family.
	Pools []wire.Pool
	// FlowIdle is the longest one of the copier's flows goes without a
	// reply while it lives (announced: the agent forgets flows idle for
	// twice as long); 0 leaves it to the agent.
	FlowIdle time.Duration
	// ReplyPrefix is how many bytes of each reply's TCP payload the copier
	// asks the agent, in its hello, to relay after the reply's headers
	// (as many as the reply has, up to this): 0..wire.MaxReplyPrefix, 0
	// for the headers alone. A copy daemon that compares responses asks
	// for DefaultReplyPrefix.
	ReplyPrefix int
	// H2Ports are the shadow ports whose replies the copier compares as
	// HTTP/2: it asks the agent (Hello.H2Ports) for their frame records
	// instead of a payload prefix. At most wire.MaxH2Ports.
	H2Ports      []uint16
	DialTimeout  time.Duration // bounds one connect
	RetryMin     time.Duration // first reconnect delay
	RetryMax     time.Duration // longest reconnect delay
	StableAfter  time.Duration // a connection that lived this long resets the reconnect delay
	PingInterval time.Duration // keepalive; silence for silentPings intervals drops the link
	// ResyncInterval is how often every live registration is sent again,
	// so that one the agent refused or expired comes back.
	ResyncInterval time.Duration
	// Dial connects to Addr; nil uses a TCP dialer. Tests plug in pipes.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// Tunnel, if set, is given the tunnel's Sealer of every connection
	// (copy --transport udp), and nil while there is none: the tunnel
	// needs a Secret.
	Tunnel *tunnel.Current
}

// DefaultReplyPrefix is the reply prefix a copy daemon that compares the
// shadow's responses asks for: enough for an HTTP status line, a Redis
// reply's first line, a PostgreSQL ErrorResponse's SQLSTATE.
const DefaultReplyPrefix = 64

// DefaultClientConfig returns the configuration with every default filled
// in (there is none for Addr, Name, Secret, TLS, Pools, FlowIdle, Dial or
// ReplyPrefix, whose zero asks for the headers alone):
// what NewClient uses for a zero field, and what a command line offers as
// its flags' defaults. The defaults are written here and nowhere else.
func DefaultClientConfig() ClientConfig {
	return ClientConfig{
		DialTimeout:    3 * time.Second,
		RetryMin:       100 * time.Millisecond,
		RetryMax:       5 * time.Second,
		StableAfter:    10 * time.Second,
		PingInterval:   5 * time.Second,
		ResyncInterval: time.Minute,
	}
}

// defaults fills c's zero fields from DefaultClientConfig.
func (c *ClientConfig) defaults() {
	d := DefaultClientConfig()
	for _, f := range []struct {
		v   *time.Duration
		def time.Duration
	}{
		{&c.DialTimeout, d.DialTimeout}, {&c.RetryMin, d.RetryMin}, {&c.RetryMax, d.RetryMax},
		{&c.StableAfter, d.StableAfter}, {&c.PingInterval, d.PingInterval}, {&c.ResyncInterval, d.ResyncInterval},
	} {
		if *f.v == 0 {
			*f.v = f.def
		}
	}
}

// ClientStats counts the control channel's work; what could not be done
// while the agent was away is counted, not lost silently.
type ClientStats struct {
	Connected       bool
	Connects        uint64
	Disconnects     uint64
	ConnectFailures uint64
	Registered      uint64 // flow registrations written (resyncs included)
	Deregistered    uint64
	Resyncs         uint64 // times every live registration was sent again
	Flows           int64  // flows the copier wants registered (gauge)
	ReplyFrames     uint64
	Replies         uint64
	BadFrames       uint64 // frames from the agent that failed authentication, skipped
}

// Client registers flows with the agent and receives their replies. It
// reconnects by itself, replaying every live registration, and never
// blocks its callers on the connection: Register and Deregister change
// the set of flows wanted, under a lock held for a map update, and the
// writer sends what changed.
type Client struct {
	cfg     ClientConfig
	log     *slog.Logger
	onReply func(reply []byte)
	kick    chan struct{} // 1-buffered: the set changed, or a Flush waits

	mu      sync.Mutex                 // guards the fields below
	want    map[rewrite.Tuple]int      // flows wanted → index in list
	list    []rewrite.Tuple            // the flows wanted, in no order
	dirty   map[rewrite.Tuple]struct{} // flows added or removed since the writer last looked
	gen     uint64                     // changes to the set so far
	flushes []flushWaiter              // Flush calls waiting for the writer

	connected                                          atomic.Bool
	connects, disconnects, connectFails                atomic.Uint64
	registered, deregistered, resyncs, frames, replies atomic.Uint64
	badFrames                                          atomic.Uint64
	flows                                              atomic.Int64
	running                                            atomic.Bool // Run is serving

	// wait is how the dial loop pauses; tests record the pauses.
	wait func(time.Duration) <-chan time.Time
}

type flushWaiter struct {
	gen  uint64 // the change the Flush waits to see written
	done chan struct{}
}

// NewClient returns a client that calls onReply, from one goroutine at a
// time, with each relayed reply (valid during the call only): its IP and
// TCP headers, followed by the first bytes of its TCP payload, as many as
// it had up to cfg.ReplyPrefix (none when 0). The IP header keeps the
// payload length the shadow sent, so rewrite.Packet.DecodeHeader decodes
// it: PayloadLen is the whole payload's, Payload the bytes relayed.
//
// A ReplyPrefix outside 0..wire.MaxReplyPrefix is a configuration error
// that every connection attempt reports (ErrReplyPrefix), without dialing.
func NewClient(cfg ClientConfig, onReply func(reply []byte), log *slog.Logger) *Client {
	cfg.defaults()
	return &Client{
		cfg: cfg, log: log, onReply: onReply, kick: make(chan struct{}, 1),
		want: make(map[rewrite.Tuple]int), dirty: make(map[rewrite.Tuple]struct{}),
		wait: time.After,
	}
}

// Register adds a flow (copier → shadow direction) to the set registered
// with the agent.
func (c *Client) Register(flow rewrite.Tuple) {
	c.mu.Lock()
	if _, ok := c.want[flow]; !ok {
		c.want[flow] = len(c.list)
		c.list = append(c.list, flow)
		c.changed(flow)
	}
	c.mu.Unlock()
	c.nudge()
}

// Deregister removes a flow from the set.
func (c *Client) Deregister(flow rewrite.Tuple) {
	c.mu.Lock()
	if i, ok := c.want[flow]; ok {
		last := len(c.list) - 1
		c.list[i] = c.list[last]
		c.want[c.list[i]] = i
		c.list = c.list[:last]
		delete(c.want, flow)
		c.changed(flow)
	}
	c.mu.Unlock()
	c.nudge()
}

// changed records a change of flow; c.mu is held.
func (c *Client) changed(flow rewrite.Tuple) {
	c.dirty[flow] = struct{}{}
	c.gen++
	c.flows.Store(int64(len(c.list)))
}

func (c *Client) nudge() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// Flush returns once every Register and Deregister made before it has
// been taken by the writer and, while the channel is up, written to the
// agent: a stopping copy daemon calls it so that the agent hears of every
// flow it ended. It returns ctx.Err() if ctx ends first, and nil at once
// if Run is not running.
func (c *Client) Flush(ctx context.Context) error {
	done := make(chan struct{})
	c.mu.Lock()
	// Checked under mu: a stopping Run clears running before it releases
	// the waiters under mu, so this one is either released or never added.
	if !c.running.Load() {
		c.mu.Unlock()
		return nil
	}
	c.flushes = append(c.flushes, flushWaiter{gen: c.gen, done: done})
	c.mu.Unlock()
	c.nudge()
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
		Deregistered: c.deregistered.Load(), Resyncs: c.resyncs.Load(), Flows: c.flows.Load(),
		ReplyFrames: c.frames.Load(), Replies: c.replies.Load(), BadFrames: c.badFrames.Load(),
	}
}

// Run keeps the control channel up until ctx is done. Each connect
// replays every wanted flow.
func (c *Client) Run(ctx context.Context) error {
	l := newClientLoop(c)
	c.running.Store(true)
	defer c.running.Store(false)
	connc := make(chan *clientConn)
	go c.dialLoop(ctx, l.redial, connc)
	l.redial <- -1 // connect at once
	ping := time.NewTicker(c.cfg.PingInterval)
	defer ping.Stop()
	resync := time.NewTicker(c.cfg.ResyncInterval)
	defer resync.Stop()
	for {
		select {
		case <-ctx.Done():
			c.running.Store(false)
			l.stop()
			return nil
		case cc := <-connc:
			l.onConnected(cc)
		case <-c.kick:
			l.sync()
		case <-ping.C:
			l.ping()
		case <-resync.C:
			l.resync()
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
	// clientReadBuf is the agent's frames' read buffer once authenticated.
	clientReadBuf = 64 << 10
	// replayChunk is how many wanted flows a replay or resync copies per
	// hold of the lock.
	replayChunk = wire.MaxFlowsPerFrame
	// connLogEvery bounds how often the connect and disconnect lines are
	// logged while the link flaps.
	connLogEvery = 10 * time.Second
)

// clientLoop is Run's state; only Run's goroutine touches it.
type clientLoop struct {
	c           *Client
	cur         *clientConn                // nil while disconnected
	sent        map[rewrite.Tuple]struct{} // what cur's agent was told is registered
	spare       map[rewrite.Tuple]struct{} // the dirty map the writer hands back, emptied
	adds, dels  []rewrite.Tuple            // scratch
	reg, dereg  wire.FlowBatch
	pingBuf     []byte
	connectedAt time.Time
	redial      chan time.Duration // to dialLoop: connect again; how long the last connection lived (-1: none)
	lost        chan *clientConn   // from readLoop: its connection failed
	logs        struct{ up, down, fail rateLimit }
}

func newClientLoop(c *Client) *clientLoop {
	l := &clientLoop{
		c: c, sent: make(map[rewrite.Tuple]struct{}), spare: make(map[rewrite.Tuple]struct{}),
		redial: make(chan time.Duration, 1), lost: make(chan *clientConn, 1),
	}
	l.logs.up.every, l.logs.down.every, l.logs.fail.every = connLogEvery, connLogEvery, connLogEvery
	l.reg.Reset(wire.TypeRegister)
	l.dereg.Reset(wire.TypeDeregister)
	return l
}

// onConnected takes a new connection: it replays every wanted flow and
// starts reading.
func (l *clientLoop) onConnected(cc *clientConn) {
	c := l.c
	l.cur = cc
	l.connectedAt = time.Now()
	clear(l.sent)
	c.connected.Store(true)
	if c.cfg.Tunnel != nil {
		c.cfg.Tunnel.Store(cc.tunnel)
	}
	c.connects.Add(1)
	if ok, suppressed := l.logs.up.allow(time.Now()); ok {
		c.log.Info("intercept agent connected", "agent", c.cfg.Addr, "name", cc.agent, "flows", c.flows.Load(),
			"suppressed", suppressed)
	}
	go c.readLoop(cc, l.lost)
	l.sendAll()
	l.sync()
}

// sendAll registers every wanted flow again, a chunk at a time so that
// Register never waits long; a change made meanwhile is in dirty, for the
// sync that follows.
func (l *clientLoop) sendAll() {
	c := l.c
	for i := 0; l.cur != nil; i += replayChunk {
		c.mu.Lock()
		if i >= len(c.list) {
			c.mu.Unlock()
			break
		}
		l.adds = append(l.adds[:0], c.list[i:min(i+replayChunk, len(c.list))]...)
		c.mu.Unlock()
		for _, f := range l.adds {
			l.sent[f] = struct{}{}
			l.add(&l.reg, f)
		}
	}
	l.write(&l.reg)
}

// sync sends what changed in the set since it last looked: the
// deregistrations first (they free room in the agent's quota), then the
// registrations; and releases the Flush calls that waited for it.
func (l *clientLoop) sync() {
	c := l.c
	c.mu.Lock()
	dirty := c.dirty
	c.dirty = l.spare
	gen := c.gen
	l.adds, l.dels = l.adds[:0], l.dels[:0]
	for f := range dirty {
		if _, ok := c.want[f]; ok {
			l.adds = append(l.adds, f)
		} else {
			l.dels = append(l.dels, f)
		}
	}
	c.mu.Unlock()
	clear(dirty)
	l.spare = dirty
	if l.cur != nil {
		for _, f := range l.dels {
			if _, ok := l.sent[f]; ok {
				delete(l.sent, f)
				l.add(&l.dereg, f)
			}
		}
		l.write(&l.dereg)
		for _, f := range l.adds {
			if _, ok := l.sent[f]; !ok {
				l.sent[f] = struct{}{}
				l.add(&l.reg, f)
			}
		}
		l.write(&l.reg)
	}
	l.releaseFlushes(gen)
}

// resync registers every wanted flow again: one the agent refused (its
// table was full, or another daemon held the flow) or expired comes back.
func (l *clientLoop) resync() {
	if l.cur == nil {
		return
	}
	l.c.resyncs.Add(1)
	l.sendAll()
}

// releaseFlushes lets go every Flush waiting for a change up to gen.
func (l *clientLoop) releaseFlushes(gen uint64) {
	c := l.c
	c.mu.Lock()
	keep := c.flushes[:0]
	for _, w := range c.flushes {
		if w.gen <= gen {
			close(w.done)
		} else {
			keep = append(keep, w)
		}
	}
	c.flushes = keep
	c.mu.Unlock()
}

// add appends f to b, writing b first if it is full.
func (l *clientLoop) add(b *wire.FlowBatch, f rewrite.Tuple) {
	if !b.Add(f) {
		if !b.Full() {
			return // mixed families: no agent would take it
		}
		l.write(b)
		b.Add(f)
	}
}

// write sends b, if connected and not empty, and empties it.
func (l *clientLoop) write(b *wire.FlowBatch) {
	n := b.Len()
	if n == 0 || l.cur == nil {
		b.Reset(b.Type())
		return
	}
	if !l.send(b.Frame()) {
		b.Reset(b.Type())
		return
	}
	if b.Type() == wire.TypeRegister {
		l.c.registered.Add(uint64(n))
	} else {
		l.c.deregistered.Add(uint64(n))
	}
	b.Reset(b.Type())
}

// send writes one frame to cur, sealed if the session is; a failure drops
// cur.
func (l *clientLoop) send(frame []byte) bool {
	cc := l.cur
	if cc.seal != nil {
		frame = cc.seal.Seal(frame)
	}
	_ = cc.conn.SetWriteDeadline(time.Now().Add(clientWriteTimeout))
	if _, err := cc.conn.Write(frame); err != nil {
		l.drop(cc, fmt.Errorf("write: %w", err))
		return false
	}
	return true
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
	l.pingBuf = wire.AppendPing(l.pingBuf[:0], uint64(time.Now().UnixNano()))
	l.send(l.pingBuf)
}

// drop ends cc, if it is still the current connection, and asks dialLoop
// for a new one, saying how long this one lived. Unsent batches go: the
// next connect replays the set.
func (l *clientLoop) drop(cc *clientConn, why error) {
	if cc != l.cur || l.cur == nil {
		return
	}
	c := l.c
	l.cur.conn.Close()
	l.cur = nil
	c.connected.Store(false)
	if c.cfg.Tunnel != nil {
		c.cfg.Tunnel.Store(nil)
	}
	c.disconnects.Add(1)
	lived := time.Since(l.connectedAt)
	if ok, suppressed := l.logs.down.allow(time.Now()); ok {
		c.log.Warn("intercept agent connection lost", "agent", c.cfg.Addr, "err", why,
			"lived", lived.Round(time.Millisecond), "suppressed", suppressed)
	}
	l.reg.Reset(wire.TypeRegister)
	l.dereg.Reset(wire.TypeDeregister)
	select {
	case l.redial <- lived:
	default:
	}
}

// stop ends the loop: it sends what changed and closes the connection,
// telling the agent at once rather than leaving it to notice; every
// Flush still waiting is released.
func (l *clientLoop) stop() {
	l.sync() // a failed write drops cur
	if l.cur != nil {
		l.cur.conn.Close()
	}
	l.c.connected.Store(false)
	if l.c.cfg.Tunnel != nil {
		l.c.cfg.Tunnel.Store(nil)
	}
	l.releaseFlushes(^uint64(0))
}
