package intercept

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tcpshadow/tcpshadow/capture"
	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// AgentConfig configures an Agent. Zero values take defaults.
type AgentConfig struct {
	Name       string
	Secret     []byte         // shared secret; empty: no authentication
	TLS        *tls.Config    // nil: plain TCP (the secret still authenticates)
	Allow      []netip.Prefix // copy daemons allowed to connect; empty: any
	FlushDelay time.Duration  // longest a relayed header waits for its batch under load (default 200µs)
	MaxFlows   int            // flow table bound (default 1<<20)
	ParkTime   time.Duration  // how long a SYN-ACK or RST may wait for its registration (default 1s)
	MaxParked  int            // parked replies bound (default 4096)
	QueueLen   int            // captured headers waiting for the relay (default 16384)
	PeerQueue  int            // batches waiting to be written to one daemon (default 256)
}

func (c *AgentConfig) defaults() {
	if c.FlushDelay == 0 {
		c.FlushDelay = 200 * time.Microsecond
	}
	if c.MaxFlows == 0 {
		c.MaxFlows = 1 << 20
	}
	if c.ParkTime == 0 {
		c.ParkTime = time.Second
	}
	if c.MaxParked == 0 {
		c.MaxParked = 4096
	}
	if c.QueueLen == 0 {
		c.QueueLen = 16384
	}
	if c.PeerQueue == 0 {
		c.PeerQueue = 256
	}
}

// AgentStats counts what the agent did; every captured packet lands in
// exactly one of Relayed, NoOwner, Dropped*, Parked or Bad.
type AgentStats struct {
	Captured        uint64 // IP packets read from the capture
	Bad             uint64 // not decodable as TCP
	Relayed         uint64 // headers queued to a copy daemon
	NoOwner         uint64 // no registered flow and not parkable
	Parked          uint64 // SYN-ACK/RST parked awaiting registration
	ParkedDelivered uint64
	ParkedExpired   uint64 // parked and never claimed (or evicted)
	DroppedQueue    uint64 // relay queue full: capture never waits
	DroppedPeer     uint64 // a daemon's write queue full
	Flows           int64  // registered flows (gauge)
	FlowsRejected   uint64 // flow table full
	Peers           int64  // connected daemons (gauge)
	PeersRefused    uint64 // failed handshake, authentication or allowlist
	PeerErrors      uint64 // connections closed on a protocol error
	Batches         uint64 // reply frames written
}

// Agent relays the shadow's reply headers to the copy daemons that
// registered their flows.
type Agent struct {
	cfg AgentConfig
	src capture.Source
	ln  net.Listener
	log *slog.Logger

	hdrs chan capturedHdr
	ops  chan flowOp

	st struct {
		captured, bad, relayed, noOwner, parked, parkedDelivered, parkedExpired atomic.Uint64
		droppedQueue, droppedPeer, flowsRejected, peersRefused, peerErrors      atomic.Uint64
		batches                                                                 atomic.Uint64
		flows, peers                                                            atomic.Int64
	}

	refusedMu sync.Mutex
	refused   map[netip.Addr]bool // peers already logged as refused: log once
}

type capturedHdr struct {
	ts  int64
	n   uint8
	hdr [wire.MaxReplyHeader]byte
	key rewrite.Tuple // reply direction: shadow → forged client
	syn bool          // SYN or RST: may beat its registration
}

type opKind uint8

const (
	opRegister opKind = iota + 1
	opDeregister
	opPeerUp
	opPeerDown
)

type flowOp struct {
	kind  opKind
	peer  *agentPeer
	flows []rewrite.Tuple
}

// NewAgent returns an agent reading replies from src and serving copy
// daemons on ln. Run starts it.
func NewAgent(cfg AgentConfig, src capture.Source, ln net.Listener, log *slog.Logger) *Agent {
	cfg.defaults()
	return &Agent{
		cfg: cfg, src: src, ln: ln, log: log,
		hdrs:    make(chan capturedHdr, cfg.QueueLen),
		ops:     make(chan flowOp, 1024),
		refused: make(map[netip.Addr]bool),
	}
}

// Stats returns a snapshot of the counters.
func (a *Agent) Stats() AgentStats {
	s := &a.st
	return AgentStats{
		Captured: s.captured.Load(), Bad: s.bad.Load(), Relayed: s.relayed.Load(),
		NoOwner: s.noOwner.Load(), Parked: s.parked.Load(), ParkedDelivered: s.parkedDelivered.Load(),
		ParkedExpired: s.parkedExpired.Load(), DroppedQueue: s.droppedQueue.Load(),
		DroppedPeer: s.droppedPeer.Load(), Flows: s.flows.Load(), FlowsRejected: s.flowsRejected.Load(),
		Peers: s.peers.Load(), PeersRefused: s.peersRefused.Load(), PeerErrors: s.peerErrors.Load(),
		Batches: s.batches.Load(),
	}
}

// Addr returns the listening address.
func (a *Agent) Addr() net.Addr { return a.ln.Addr() }

// Run serves until ctx is done or the capture fails.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	wg.Add(3)
	go func() {
		defer wg.Done()
		errc <- a.captureLoop(ctx)
		cancel()
	}()
	go func() {
		defer wg.Done()
		a.relayLoop(ctx)
	}()
	go func() {
		defer wg.Done()
		errc <- a.acceptLoop(ctx)
		cancel()
	}()
	<-ctx.Done()
	a.ln.Close()
	a.src.Close()
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			return err
		}
	}
	return nil
}

// captureLoop reads replies and hands their headers to the relay; it
// never waits for the relay.
func (a *Agent) captureLoop(ctx context.Context) error {
	for ctx.Err() == nil {
		pkt, ts, err := a.src.Read()
		switch {
		case err == nil:
		case errors.Is(err, capture.ErrTimeout):
			continue
		case errors.Is(err, io.EOF):
			return nil
		default:
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("capture: %w", err)
		}
		a.st.captured.Add(1)
		var h capturedHdr
		if !relayHeader(pkt, &h) {
			a.st.bad.Add(1)
			continue
		}
		h.ts = ts.UnixNano()
		select {
		case a.hdrs <- h:
		default:
			a.st.droppedQueue.Add(1)
		}
	}
	return nil
}

// relayHeader fills h with the header to relay for captured packet pkt:
// the IP header (IPv6 extension headers dropped) and the TCP header.
func relayHeader(pkt []byte, h *capturedHdr) bool {
	var p rewrite.Packet
	if p.DecodeHeader(pkt) != nil {
		return false
	}
	tcp := p.TCP()
	h.key = p.Tuple()
	h.syn = tcp.Flags()&(rewrite.FlagSYN|rewrite.FlagRST) != 0
	if !p.IsV6() {
		hdrs := p.Headers()
		if len(hdrs) > len(h.hdr) {
			return false
		}
		h.n = uint8(copy(h.hdr[:], hdrs))
		return true
	}
	// IPv6: the fixed header, rewritten as if TCP followed it directly.
	n := copy(h.hdr[:rewrite.IPv6HeaderLen], pkt[:rewrite.IPv6HeaderLen])
	n += copy(h.hdr[n:], tcp)
	ip := rewrite.IPv6(h.hdr[:])
	ip[6] = rewrite.ProtoTCP
	ip.SetPayloadLen(len(tcp) + p.PayloadLen())
	h.n = uint8(n)
	return true
}

// agentPeer is one connected copy daemon.
type agentPeer struct {
	conn  net.Conn
	name  string
	addr  string
	out   chan outFrame
	flows map[rewrite.Tuple]struct{} // owned by the relay goroutine
	batch *wire.ReplyBatch           // owned by the relay goroutine
	due   time.Time                  // when batch must be flushed
	done  chan struct{}
	once  sync.Once
}

type outFrame struct {
	batch *wire.ReplyBatch // returned to batchPool after writing
	ctl   []byte
}

var batchPool = sync.Pool{New: func() any { b := new(wire.ReplyBatch); b.Reset(); return b }}

func (p *agentPeer) close() {
	p.once.Do(func() {
		close(p.done)
		p.conn.Close()
	})
}

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

// logRefusal counts a refused peer and logs it once per address, so that a
// misconfigured or hostile client cannot flood the log.
func (a *Agent) logRefusal(addr netip.Addr, msg string, err error) {
	a.st.peersRefused.Add(1)
	a.refusedMu.Lock()
	seen := a.refused[addr]
	if !seen && len(a.refused) < 4096 {
		a.refused[addr] = true
	}
	a.refusedMu.Unlock()
	if !seen {
		a.log.Warn(msg, "peer", addr, "err", err)
	}
}

// hungUp reports whether a handshake failed because the other side went
// away before saying anything: a port probe or a health check. (Our hello
// goes first; a peer closing with it unread makes its kernel reset the
// connection, so a reset counts as hanging up too.)
func hungUp(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func (a *Agent) servePeer(ctx context.Context, conn net.Conn) {
	remote := addrOf(conn.RemoteAddr())
	if !a.allowed(remote) {
		var err error = &wire.PeerError{Code: wire.CodeNotAllowed, Msg: "refused: not on the allowlist"}
		if a.cfg.TLS == nil { // a TLS client would not read a plain frame
			err = refuse(conn, wire.CodeNotAllowed, "address not on the agent's allowlist")
		}
		a.logRefusal(remote, "copy daemon not on the allowlist", err)
		conn.Close()
		return
	}
	conn, err := tlsServer(ctx, conn, a.cfg.TLS)
	if err != nil {
		if !hungUp(err) {
			a.logRefusal(remote, "copy daemon refused", err)
		}
		return
	}
	r := wire.NewReader(conn)
	info, err := handshake(conn, r, wire.RoleAgent, a.cfg.Name, a.cfg.Secret)
	if err != nil {
		conn.Close()
		if hungUp(err) {
			return // went away before saying anything: a port probe
		}
		a.logRefusal(remote, "copy daemon refused", err)
		return
	}
	p := &agentPeer{
		conn: conn, name: info.hello.Name, addr: conn.RemoteAddr().String(),
		out: make(chan outFrame, a.cfg.PeerQueue), flows: make(map[rewrite.Tuple]struct{}),
		done: make(chan struct{}),
	}
	a.st.peers.Add(1)
	a.log.Info("copy daemon connected", "peer", p.addr, "name", p.name)
	if !a.sendOp(ctx, flowOp{kind: opPeerUp, peer: p}) {
		p.close()
		a.st.peers.Add(-1)
		return
	}
	go a.writePeer(p)
	err = a.readPeer(ctx, p, r)
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

func (a *Agent) sendOp(ctx context.Context, op flowOp) bool {
	select {
	case a.ops <- op:
		return true
	case <-ctx.Done():
		return false
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
			default:
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
						batchPool.Put(f.batch)
					}
				default:
					return
				}
			}
		case f := <-p.out:
			_ = p.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
			var err error
			if f.batch != nil {
				_, err = p.conn.Write(f.batch.Frame())
				f.batch.Reset()
				batchPool.Put(f.batch)
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

// parkedReply is a SYN-ACK or RST that arrived before its flow's
// registration: the copy daemon sends the SYN right after registering, so
// the answer can win the race (scenario 1).
type parkedReply struct {
	h  capturedHdr
	at time.Time
}

// relay owns the flow table, the parked replies and the peers' batches.
type relay struct {
	a      *Agent
	owners map[rewrite.Tuple]*agentPeer // key: reply direction
	peers  map[*agentPeer]struct{}
	park   []parkedReply // ring
	parkAt map[rewrite.Tuple]int
	next   int
	timer  *time.Timer
	armed  time.Time
}

func (a *Agent) relayLoop(ctx context.Context) {
	r := &relay{
		a: a, owners: make(map[rewrite.Tuple]*agentPeer), peers: make(map[*agentPeer]struct{}),
		park: make([]parkedReply, a.cfg.MaxParked), parkAt: make(map[rewrite.Tuple]int),
		timer: time.NewTimer(time.Hour),
	}
	defer r.timer.Stop()
	for {
		select {
		case <-ctx.Done():
			for p := range r.peers {
				p.close()
				r.dropPeer(p)
			}
			return
		case h := <-a.hdrs:
			r.onHeader(&h, time.Now())
		case op := <-a.ops:
			r.onOp(op, time.Now())
		case <-r.timer.C:
			r.armed = time.Time{}
		}
		// Nothing more captured and queued: send what there is now. A
		// block of replies from the capture still leaves in one batch
		// (the capture goroutine queues it whole), and a lone reply at a
		// low rate costs no timer wake-up. FlushDelay bounds the rest.
		r.flushDue(time.Now(), len(a.hdrs) == 0)
	}
}

func (r *relay) onHeader(h *capturedHdr, now time.Time) {
	p := r.owners[h.key]
	if p == nil {
		if !h.syn {
			r.a.st.noOwner.Add(1)
			return
		}
		r.parkReply(h, now)
		return
	}
	r.deliver(p, h, now)
}

func (r *relay) deliver(p *agentPeer, h *capturedHdr, now time.Time) {
	if p.batch == nil {
		p.batch = batchPool.Get().(*wire.ReplyBatch)
		p.due = now.Add(r.a.cfg.FlushDelay)
	}
	if !p.batch.Add(h.ts, h.hdr[:h.n]) {
		if !p.batch.Full() {
			r.a.st.bad.Add(1)
			return
		}
		r.flush(p)
		p.batch = batchPool.Get().(*wire.ReplyBatch)
		p.due = now.Add(r.a.cfg.FlushDelay)
		p.batch.Add(h.ts, h.hdr[:h.n])
	}
	r.a.st.relayed.Add(1)
}

// flush hands p's batch to its writer.
func (r *relay) flush(p *agentPeer) {
	b := p.batch
	p.batch = nil
	if b == nil || b.Len() == 0 {
		if b != nil {
			batchPool.Put(b)
		}
		return
	}
	select {
	case p.out <- outFrame{batch: b}:
	default:
		r.a.st.droppedPeer.Add(uint64(b.Len()))
		b.Reset()
		batchPool.Put(b)
	}
}

// flushDue flushes every batch past its deadline, or every batch if all
// is true, and arms the timer for the earliest remaining one.
func (r *relay) flushDue(now time.Time, all bool) {
	var earliest time.Time
	for p := range r.peers {
		if p.batch == nil {
			continue
		}
		if all || !now.Before(p.due) {
			r.flush(p)
			continue
		}
		if earliest.IsZero() || p.due.Before(earliest) {
			earliest = p.due
		}
	}
	if !earliest.IsZero() && (r.armed.IsZero() || earliest.Before(r.armed)) {
		r.timer.Reset(earliest.Sub(now))
		r.armed = earliest
	}
}

func (r *relay) onOp(op flowOp, now time.Time) {
	p := op.peer
	switch op.kind {
	case opPeerUp:
		r.peers[p] = struct{}{}
	case opPeerDown:
		r.dropPeer(p)
	case opRegister:
		if _, live := r.peers[p]; !live {
			return
		}
		for _, f := range op.flows {
			key := f.Reverse()
			if old, ok := r.owners[key]; ok {
				if old == p {
					continue
				}
				delete(old.flows, key) // the newest registration wins
			} else if len(r.owners) >= r.a.cfg.MaxFlows {
				r.a.st.flowsRejected.Add(1)
				continue
			} else {
				r.a.st.flows.Add(1)
			}
			r.owners[key] = p
			p.flows[key] = struct{}{}
			r.claimParked(p, key, now)
		}
	case opDeregister:
		for _, f := range op.flows {
			key := f.Reverse()
			if r.owners[key] == p {
				delete(r.owners, key)
				delete(p.flows, key)
				r.a.st.flows.Add(-1)
			}
		}
	}
}

func (r *relay) dropPeer(p *agentPeer) {
	if _, ok := r.peers[p]; !ok {
		return
	}
	delete(r.peers, p)
	for key := range p.flows {
		if r.owners[key] == p {
			delete(r.owners, key)
			r.a.st.flows.Add(-1)
		}
	}
	p.flows = nil
	if p.batch != nil {
		p.batch.Reset()
		batchPool.Put(p.batch)
		p.batch = nil
	}
}

func (r *relay) parkReply(h *capturedHdr, now time.Time) {
	slot := &r.park[r.next]
	if slot.h.n != 0 {
		if i, ok := r.parkAt[slot.h.key]; ok && i == r.next {
			delete(r.parkAt, slot.h.key)
			r.a.st.parkedExpired.Add(1)
		}
	}
	*slot = parkedReply{h: *h, at: now}
	r.parkAt[h.key] = r.next
	r.next = (r.next + 1) % len(r.park)
	r.a.st.parked.Add(1)
}

func (r *relay) claimParked(p *agentPeer, key rewrite.Tuple, now time.Time) {
	i, ok := r.parkAt[key]
	if !ok {
		return
	}
	delete(r.parkAt, key)
	slot := &r.park[i]
	if now.Sub(slot.at) > r.a.cfg.ParkTime {
		r.a.st.parkedExpired.Add(1)
	} else {
		r.a.st.parkedDelivered.Add(1)
		r.deliver(p, &slot.h, now)
	}
	slot.h.n = 0
}
