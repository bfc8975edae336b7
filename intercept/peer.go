package intercept

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/tcpshadow/tcpshadow/intercept/tunnel"
	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/internal/rawconn"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// agentPeer is one connected copy daemon. Everything but flows, batch and
// due is set before the relay hears of it and never changes.
type agentPeer struct {
	conn   net.Conn
	name   string
	addr   string     // host:port, for logs
	remote netip.Addr // for the per-address limit
	pools  []wire.Pool
	lease  time.Duration // a flow of this daemon idle longer is expired
	prefix int           // payload bytes relayed after each reply's headers (its hello's ReplyPrefix)
	h2     []uint16      // shadow ports whose replies are relayed as H2 records (its hello's H2Ports)
	seal   *wire.Sealer  // owned by writePeer; nil: frames are not sealed
	tunnel *tunnel.Peer  // in AgentConfig.Tunnels while connected; nil: none
	out    chan outFrame // to writePeer; full: the relay drops, counted
	done   chan struct{} // closed by close: writePeer stops
	once   sync.Once

	flows map[rewrite.Tuple]*flowEntry // owned by the relay goroutine
	batch *wire.ReplyBatch             // owned by the relay goroutine
	due   time.Time                    // when batch must be flushed
}

// outFrame is one frame for writePeer: a reply batch or a control frame.
type outFrame struct {
	batch *wire.ReplyBatch // recycled after writing
	ctl   []byte
	last  bool // close the connection once it is written
}

var batchPool = sync.Pool{New: func() any { b := new(wire.ReplyBatch); b.Reset(); return b }}

// recycle empties b and returns it to batchPool: a batch goes back only
// this way, so a batch taken from the pool never holds another's headers.
func recycle(b *wire.ReplyBatch) {
	b.Reset()
	batchPool.Put(b)
}

// close ends the peer, once, from whichever side notices first: its
// reader, its writer or the relay.
func (p *agentPeer) close() {
	p.once.Do(func() {
		close(p.done)
		p.conn.Close()
	})
}

const (
	// peerWriteTimeout bounds one write to a daemon; a daemon that does
	// not read for that long is dropped.
	peerWriteTimeout = 10 * time.Second
	// maxRefusedLogged bounds the addresses remembered as already logged
	// as refused, and refusedLogTTL how long one is remembered: a refused
	// address is logged once an hour at most, and memory stays bounded.
	maxRefusedLogged = 4096
	refusedLogTTL    = time.Hour
	// acceptBackoffMin and acceptBackoffMax bound the pause after a
	// failed accept (EMFILE, ENFILE, ENOMEM...), doubling while accepts
	// keep failing, as net/http's.
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
	// peerReadBuf is a copy daemon's read buffer once authenticated; its
	// largest frame is a full Register.
	peerReadBuf = 16 << 10
	// maxPeerFrame bounds a copy daemon's frames: a Register or
	// Deregister of MaxFlowsPerFrame flows, sealed.
	maxPeerFrame = 1 + 2 + wire.MaxFlowsPerFrame*wire.FlowLen + wire.TagLen
)

// acceptLoop accepts until the listener is closed. A failed accept does
// not end it: the descriptors a flood took come back as its handshakes
// time out, and the daemons connected meanwhile are served all along.
func (a *Agent) acceptLoop(ctx context.Context) {
	var delay time.Duration
	for {
		conn, err := a.ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			a.st.acceptErrors.Add(1)
			delay = min(max(2*delay, acceptBackoffMin), acceptBackoffMax)
			if ok, suppressed := a.logs.accept.allow(time.Now()); ok {
				a.log.Warn("accept failed; retrying", "err", err, "retry_in", delay, "suppressed", suppressed)
			}
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return
			}
			continue
		}
		delay = 0
		a.admitConn(ctx, conn)
	}
}

// connLimits counts the connections in their handshake, the peers and the
// connections per address. It is taken once per connection, never per
// packet.
type connLimits struct {
	mu         sync.Mutex // guards the fields below
	handshakes int
	peers      int
	perAddr    map[netip.Addr]int
}

// acquire takes a handshake slot for a connection from addr, or says why
// not.
func (a *Agent) acquire(addr netip.Addr) string {
	c := &a.conns
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.handshakes >= a.cfg.MaxHandshakes:
		return "too many handshakes in progress"
	case c.perAddr[addr] >= a.cfg.MaxConnsPerAddr:
		return "too many connections from this address"
	case c.peers >= a.cfg.MaxPeers:
		return "too many copy daemons connected"
	}
	c.handshakes++
	c.perAddr[addr]++
	return ""
}

// promote turns a handshake slot into a peer's.
func (a *Agent) promote() {
	a.conns.mu.Lock()
	a.conns.handshakes--
	a.conns.peers++
	a.conns.mu.Unlock()
}

// release gives back a connection's slot.
func (a *Agent) release(addr netip.Addr, wasPeer bool) {
	c := &a.conns
	c.mu.Lock()
	defer c.mu.Unlock()
	if wasPeer {
		c.peers--
	} else {
		c.handshakes--
	}
	if c.perAddr[addr]--; c.perAddr[addr] <= 0 {
		delete(c.perAddr, addr)
	}
}

// admitConn decides, in the accept loop and without reading a byte,
// whether conn may start a handshake: its address is allowed and the
// limits leave room. It then serves conn in a goroutine of its own.
func (a *Agent) admitConn(ctx context.Context, conn net.Conn) {
	remote := addrOf(conn.RemoteAddr())
	if !a.allowed(remote) {
		var err error = &wire.PeerError{Code: wire.CodeNotAllowed, Msg: "refused: not on the allowlist"}
		if a.cfg.TLS == nil { // a TLS client would not read a plain frame
			err = refuseNow(conn, wire.CodeNotAllowed, "address not on the agent's allowlist")
		}
		a.logRefusal(remote, "copy daemon not on the allowlist", err)
		conn.Close()
		return
	}
	if why := a.acquire(remote); why != "" {
		a.st.connsShed.Add(1)
		if a.cfg.TLS == nil {
			_ = refuseNow(conn, wire.CodeOverload, why)
		}
		conn.Close()
		if ok, suppressed := a.logs.shed.allow(time.Now()); ok {
			a.log.Warn("connection shed", "peer", remote, "why", why, "suppressed", suppressed)
		}
		return
	}
	a.serving.Add(1)
	go func() {
		defer a.serving.Done()
		a.servePeer(ctx, conn, remote)
	}()
}

// refuseNow writes a refusal to a connection just accepted, whose send
// buffer is empty: it never waits.
func refuseNow(conn net.Conn, code wire.ErrorCode, msg string) error {
	_ = conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_, _ = conn.Write(wire.AppendError(nil, code, msg))
	return &wire.PeerError{Code: code, Msg: "refused: " + msg}
}

// servePeer runs one connection: admission, then the peer's life until it
// or the agent goes away. The relay hears of the peer before its first
// registration and of its end after its last.
func (a *Agent) servePeer(ctx context.Context, conn net.Conn, remote netip.Addr) {
	p, r := a.admit(ctx, conn, remote)
	if p == nil {
		a.release(remote, false)
		return
	}
	a.promote()
	defer a.release(remote, true)
	a.log.Info("copy daemon connected", "peer", p.addr, "name", p.name, "pools", fmt.Sprint(p.pools), "reply_prefix", p.prefix)
	if !a.sendOp(ctx.Done(), flowOp{kind: opPeerUp, peer: p}) {
		p.close()
		return
	}
	if p.tunnel != nil {
		a.cfg.Tunnels.Add(p.tunnel)
	}
	go a.writePeer(p)
	err := a.readPeer(ctx, p, r)
	p.close()
	if p.tunnel != nil {
		a.cfg.Tunnels.Remove(p.tunnel.Open.Session())
	}
	// The relay may have returned (the agent is stopping): then it has
	// dropped every peer itself, and nobody would take this op.
	a.sendOp(nil, flowOp{kind: opPeerDown, peer: p})
	if err != nil && ctx.Err() == nil {
		a.st.peerErrors.Add(1)
		a.log.Warn("copy daemon disconnected", "peer", p.addr, "err", err)
		return
	}
	a.log.Info("copy daemon disconnected", "peer", p.addr)
}

// admit runs what a connection meets before it is a peer: TLS and the
// handshake, under one deadline, reading with a small buffer. It returns
// the peer and its reader, grown for the frames a peer sends, or nil with
// conn closed and the refusal counted and logged.
func (a *Agent) admit(ctx context.Context, conn net.Conn, remote netip.Addr) (*agentPeer, *wire.Reader) {
	deadline := time.Now().Add(handshakeTimeout)
	if err := conn.SetDeadline(deadline); err != nil {
		conn.Close()
		return nil, nil
	}
	// Raw reads and writes: a relayed reply then wakes no sysmon (package
	// rawconn). Under TLS too, which reads and writes through conn.
	conn, err := tlsServer(ctx, rawconn.Wrap(conn), a.cfg.TLS, deadline)
	if err != nil {
		if !hungUp(err) {
			a.logRefusal(remote, "copy daemon refused", err)
		}
		return nil, nil
	}
	r := wire.NewHandshakeReader(conn)
	s, err := handshake(conn, r, handshakeConfig{
		role: wire.RoleAgent, name: a.cfg.Name, secret: a.cfg.Secret, secrets: a.cfg.Secrets, deadline: deadline,
	})
	if err != nil {
		conn.Close()
		if hungUp(err) {
			return nil, nil // went away before saying anything: a port probe
		}
		a.logRefusal(remote, "copy daemon refused", err)
		return nil, nil
	}
	r.Resize(peerReadBuf, maxPeerFrame)
	lease := a.cfg.FlowExpiry
	if s.hello.FlowIdle > 0 {
		lease = 2 * s.hello.FlowIdle
	}
	p := &agentPeer{
		conn: conn, name: s.name, addr: conn.RemoteAddr().String(), remote: remote,
		pools: s.hello.Pools, lease: lease, prefix: int(s.hello.ReplyPrefix), h2: s.hello.H2Ports, seal: s.seal,
		out: make(chan outFrame, a.cfg.PeerQueue), flows: make(map[rewrite.Tuple]*flowEntry),
		done: make(chan struct{}),
	}
	if a.cfg.Tunnels != nil && s.secret != nil {
		// Without a secret there are no keys: that daemon's datagrams
		// are refused (no session).
		if seal, open, err := s.tunnelKeys(wire.RoleAgent); err == nil {
			p.tunnel = &tunnel.Peer{Open: open, Seal: seal}
			for _, pool := range s.hello.Pools {
				p.tunnel.Pools = append(p.tunnel.Pools, pool.Prefix)
			}
		}
	}
	return p, r
}

func (a *Agent) allowed(addr netip.Addr) bool {
	if len(a.cfg.Allow) == 0 {
		return true
	}
	for _, pfx := range a.cfg.Allow {
		if pfx.Contains(addr) {
			return true
		}
	}
	return false
}

func addrOf(na net.Addr) netip.Addr {
	if ta, ok := na.(*net.TCPAddr); ok {
		a, _ := netip.AddrFromSlice(ta.IP)
		return a.Unmap()
	}
	ap, _ := netip.ParseAddrPort(na.String())
	return ap.Addr().Unmap()
}

// hungUp reports whether a handshake failed because the other side went
// away before saying anything: a port probe or a health check. (Our hello
// goes first; a peer closing with it unread makes its kernel reset the
// connection, so a reset counts as hanging up too.)
func hungUp(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// logRefusal counts a refused peer and logs it once per address and
// refusedLogTTL, so that a misconfigured client retrying every backoff
// does not flood the log, nor does a crowd of addresses.
func (a *Agent) logRefusal(addr netip.Addr, msg string, err error) {
	a.st.peersRefused.Add(1)
	if a.refused.first(addr, time.Now()) {
		a.log.Warn(msg, "peer", addr, "err", err)
	}
}

// readPeer handles one daemon's frames until it goes away.
func (a *Agent) readPeer(ctx context.Context, p *agentPeer, r *wire.Reader) error {
	bucket := tokenBucket{rate: float64(a.cfg.PeerFlowRate), burst: float64(a.cfg.PeerFlowBurst)}
	bucket.fill(time.Now())
	for {
		typ, payload, err := r.Next()
		switch {
		case errors.Is(err, wire.ErrBadMAC):
			a.st.badFrames.Add(1) // injected or corrupted: skipped, the session goes on
			continue
		case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
			return nil
		case err != nil:
			return err
		}
		switch typ {
		case wire.TypeRegister, wire.TypeDeregister:
			flows := make([]rewrite.Tuple, 0, 16)
			if _, err := wire.ForEachFlow(payload, func(t rewrite.Tuple) { flows = append(flows, t) }); err != nil {
				a.refusePeer(p, wire.CodeProtocol, err.Error())
				return err
			}
			if !a.throttle(ctx, p, &bucket, len(flows)) {
				return nil
			}
			kind := opRegister
			if typ == wire.TypeDeregister {
				kind = opDeregister
			}
			if !a.sendOp(ctx.Done(), flowOp{kind: kind, peer: p, flows: flows}) {
				return nil
			}
		case wire.TypePing:
			tok, err := wire.ParsePing(payload)
			if err != nil {
				a.refusePeer(p, wire.CodeProtocol, err.Error())
				return err
			}
			select {
			case p.out <- outFrame{ctl: wire.AppendPong(nil, tok)}:
			default: // a pong the daemon misses only costs it a keepalive
			}
		case wire.TypePong:
		case wire.TypeError:
			return peerErr(payload)
		default:
			err := fmt.Errorf("unexpected %v frame from copy daemon", typ)
			a.refusePeer(p, wire.CodeProtocol, err.Error())
			return err
		}
	}
}

// refusePeer has the peer's writer send a last Error frame (sealed, as
// every frame after the handshake), if its queue has room.
func (a *Agent) refusePeer(p *agentPeer, code wire.ErrorCode, msg string) {
	select {
	case p.out <- outFrame{ctl: wire.AppendError(nil, code, msg), last: true}:
		// Give the writer a moment to send it before the connection closes.
		t := time.NewTimer(time.Second)
		defer t.Stop()
		select {
		case <-p.done:
		case <-t.C:
		}
	default:
	}
}

// throttle waits until p's bucket holds n flows' worth of tokens: a peer
// over its rate is read more slowly. False means the agent or the peer
// ended meanwhile.
func (a *Agent) throttle(ctx context.Context, p *agentPeer, b *tokenBucket, n int) bool {
	wait := b.take(time.Now(), float64(n))
	if wait <= 0 {
		return true
	}
	a.st.peerThrottled.Add(1)
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
	case <-p.done:
	}
	return false
}

// tokenBucket is a flow-rate limit: rate tokens a second, at most burst
// held. Its goroutine only.
type tokenBucket struct {
	rate, burst, tokens float64
	at                  time.Time
}

func (b *tokenBucket) fill(now time.Time) {
	if !b.at.IsZero() {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.at).Seconds()*b.rate)
	} else {
		b.tokens = b.burst
	}
	b.at = now
}

// take takes n tokens, going into debt if need be, and returns how long
// until the debt is paid.
func (b *tokenBucket) take(now time.Time, n float64) time.Duration {
	b.fill(now)
	b.tokens -= n
	if b.tokens >= 0 || b.rate <= 0 {
		return 0
	}
	return time.Duration(-b.tokens / b.rate * float64(time.Second))
}

// sendOp hands op to the relay. A peer may wait here (the relay is busy),
// which only slows that peer; false means done was closed or the relay
// has returned. A nil done waits for the relay alone.
func (a *Agent) sendOp(done <-chan struct{}, op flowOp) bool {
	select {
	case a.ops <- op:
		return true
	case <-done:
		return false
	case <-a.relayDone:
		return false
	}
}

// writePeer writes batches to one daemon, sealing each frame when the
// session is sealed. A slow daemon only fills its own queue; the relay
// drops, counted, rather than wait.
func (a *Agent) writePeer(p *agentPeer) {
	for {
		select {
		case <-p.done:
			for {
				select {
				case f := <-p.out:
					if f.batch != nil {
						recycle(f.batch)
					}
				default:
					return
				}
			}
		case f := <-p.out:
			_ = p.conn.SetWriteDeadline(time.Now().Add(peerWriteTimeout))
			frame := f.ctl
			if f.batch != nil {
				frame = f.batch.Frame()
			}
			if p.seal != nil {
				frame = p.seal.Seal(frame)
			}
			_, err := p.conn.Write(frame)
			if f.batch != nil {
				recycle(f.batch)
				a.st.batches.Add(1)
			}
			if err != nil || f.last {
				p.close()
			}
		}
	}
}

// refusalLog remembers which addresses were logged as refused, and when:
// a time-bounded LRU, so that an address is logged again only after ttl,
// and a crowd of addresses does not grow it (the least recently refused
// is forgotten; an address refused over and over stays remembered).
type refusalLog struct {
	max int
	ttl time.Duration

	mu    sync.Mutex // guards the fields below; taken per refused connection, never per packet
	seen  map[netip.Addr]*list.Element
	order *list.List // of refusalEntry, most recently logged first
}

type refusalEntry struct {
	addr netip.Addr
	at   time.Time
}

func newRefusalLog(max int, ttl time.Duration) *refusalLog {
	return &refusalLog{max: max, ttl: ttl, seen: make(map[netip.Addr]*list.Element), order: list.New()}
}

// first reports whether addr's refusal at now is to be logged.
func (l *refusalLog) first(addr netip.Addr, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.seen[addr]; ok {
		ent := e.Value.(*refusalEntry)
		l.order.MoveToFront(e) // recently refused: the last to be forgotten
		if now.Sub(ent.at) < l.ttl {
			return false
		}
		ent.at = now
		return true
	}
	if l.order.Len() >= l.max {
		old := l.order.Back()
		delete(l.seen, old.Value.(*refusalEntry).addr)
		l.order.Remove(old)
	}
	l.seen[addr] = l.order.PushFront(&refusalEntry{addr: addr, at: now})
	return true
}

// rateLimit lets one log line through per interval and counts the ones it
// held back, which the next line reports.
type rateLimit struct {
	every time.Duration

	mu         sync.Mutex // guards the fields below
	next       time.Time
	suppressed int
}

// allow reports whether a line may be logged at now, and how many were
// held back since the last one.
func (l *rateLimit) allow(now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Before(l.next) {
		l.suppressed++
		return false, 0
	}
	n := l.suppressed
	l.suppressed, l.next = 0, now.Add(l.every)
	return true, n
}
