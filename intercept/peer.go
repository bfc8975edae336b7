package intercept

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// agentPeer is one connected copy daemon. conn, name, addr and out are set
// before the relay hears of it and never change.
type agentPeer struct {
	conn  net.Conn
	name  string
	addr  string
	out   chan outFrame              // to writePeer; full: the relay drops, counted
	flows map[rewrite.Tuple]struct{} // owned by the relay goroutine
	batch *wire.ReplyBatch           // owned by the relay goroutine
	due   time.Time                  // when batch must be flushed
	done  chan struct{}              // closed by close: writePeer stops
	once  sync.Once
}

// outFrame is one frame for writePeer: a reply batch or a control frame.
type outFrame struct {
	batch *wire.ReplyBatch // recycled after writing
	ctl   []byte
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
	// as refused: memory stays bounded; beyond it a new address is logged
	// on every refusal.
	maxRefusedLogged = 4096
)

func (a *Agent) acceptLoop(ctx context.Context) error {
	for {
		conn, err := a.ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		go a.servePeer(ctx, conn)
	}
}

// servePeer runs one connection: admission, then the peer's life until it
// or the agent goes away. The relay hears of the peer before its first
// registration and of its end after its last.
func (a *Agent) servePeer(ctx context.Context, conn net.Conn) {
	p, r := a.admit(ctx, conn)
	if p == nil {
		return
	}
	a.st.peers.Add(1)
	a.log.Info("copy daemon connected", "peer", p.addr, "name", p.name)
	if !a.sendOp(ctx, flowOp{kind: opPeerUp, peer: p}) {
		p.close()
		a.st.peers.Add(-1)
		return
	}
	go a.writePeer(p)
	err := a.readPeer(ctx, p, r)
	p.close()
	a.sendOp(context.Background(), flowOp{kind: opPeerDown, peer: p})
	a.st.peers.Add(-1)
	if err != nil && ctx.Err() == nil {
		a.st.peerErrors.Add(1)
		a.log.Warn("copy daemon disconnected", "peer", p.addr, "err", err)
		return
	}
	a.log.Info("copy daemon disconnected", "peer", p.addr)
}

// admit runs what a connection meets before it is a peer: the allowlist,
// TLS and the handshake. It returns the peer and the reader the handshake
// started, or nil with conn closed and the refusal counted and logged.
func (a *Agent) admit(ctx context.Context, conn net.Conn) (*agentPeer, *wire.Reader) {
	remote := addrOf(conn.RemoteAddr())
	if !a.allowed(remote) {
		var err error = &wire.PeerError{Code: wire.CodeNotAllowed, Msg: "refused: not on the allowlist"}
		if a.cfg.TLS == nil { // a TLS client would not read a plain frame
			err = refuse(conn, wire.CodeNotAllowed, "address not on the agent's allowlist")
		}
		a.logRefusal(remote, "copy daemon not on the allowlist", err)
		conn.Close()
		return nil, nil
	}
	conn, err := tlsServer(ctx, conn, a.cfg.TLS)
	if err != nil {
		if !hungUp(err) {
			a.logRefusal(remote, "copy daemon refused", err)
		}
		return nil, nil
	}
	r := wire.NewReader(conn)
	info, err := handshake(conn, r, wire.RoleAgent, a.cfg.Name, a.cfg.Secret)
	if err != nil {
		conn.Close()
		if hungUp(err) {
			return nil, nil // went away before saying anything: a port probe
		}
		a.logRefusal(remote, "copy daemon refused", err)
		return nil, nil
	}
	return &agentPeer{
		conn: conn, name: info.hello.Name, addr: conn.RemoteAddr().String(),
		out: make(chan outFrame, a.cfg.PeerQueue), flows: make(map[rewrite.Tuple]struct{}),
		done: make(chan struct{}),
	}, r
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

// logRefusal counts a refused peer and logs it once per address (up to
// maxRefusedLogged addresses), so that a misconfigured client retrying
// every backoff does not flood the log.
func (a *Agent) logRefusal(addr netip.Addr, msg string, err error) {
	a.st.peersRefused.Add(1)
	a.refusedMu.Lock()
	seen := a.refused[addr]
	if !seen && len(a.refused) < maxRefusedLogged {
		a.refused[addr] = true
	}
	a.refusedMu.Unlock()
	if !seen {
		a.log.Warn(msg, "peer", addr, "err", err)
	}
}

// readPeer handles one daemon's frames until it goes away.
func (a *Agent) readPeer(ctx context.Context, p *agentPeer, r *wire.Reader) error {
	for {
		typ, payload, err := r.Next()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		switch typ {
		case wire.TypeRegister, wire.TypeDeregister:
			flows := make([]rewrite.Tuple, 0, 16)
			if _, err := wire.ForEachFlow(payload, func(t rewrite.Tuple) { flows = append(flows, t) }); err != nil {
				_ = refuse(p.conn, wire.CodeProtocol, err.Error())
				return err
			}
			kind := opRegister
			if typ == wire.TypeDeregister {
				kind = opDeregister
			}
			if !a.sendOp(ctx, flowOp{kind: kind, peer: p, flows: flows}) {
				return nil
			}
		case wire.TypePing:
			tok, err := wire.ParsePing(payload)
			if err != nil {
				_ = refuse(p.conn, wire.CodeProtocol, err.Error())
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
			_ = refuse(p.conn, wire.CodeProtocol, err.Error())
			return err
		}
	}
}

// sendOp hands op to the relay. A peer may wait here (the relay is busy),
// which only slows that peer; false means ctx ended first.
func (a *Agent) sendOp(ctx context.Context, op flowOp) bool {
	select {
	case a.ops <- op:
		return true
	case <-ctx.Done():
		return false
	}
}

// writePeer writes batches to one daemon. A slow daemon only fills its
// own queue; the relay drops, counted, rather than wait.
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
			var err error
			if f.batch != nil {
				_, err = p.conn.Write(f.batch.Frame())
				recycle(f.batch)
				a.st.batches.Add(1)
			} else {
				_, err = p.conn.Write(f.ctl)
			}
			if err != nil {
				p.close()
			}
		}
	}
}
