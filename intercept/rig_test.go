package intercept

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcpshadow/tcpshadow/capture/capturetest"
	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// The tests' rig: an agent and a client over in-memory sockets, and
// helpers to feed the capture and check what is relayed.

// pipeListener is an in-memory net.Listener: the tests never touch a
// network. Dial hands the server side of a socket pair to Accept.
type pipeListener struct {
	conns  chan net.Conn
	once   sync.Once
	closed chan struct{}
	remote netip.Addr // what RemoteAddr reports for accepted conns
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), closed: make(chan struct{}), remote: netip.MustParseAddr("198.18.1.1")}
}

type addrConn struct {
	net.Conn
	remote net.Addr
}

func (c addrConn) RemoteAddr() net.Addr { return c.remote }

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *pipeListener) Addr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(198, 18, 1, 3), Port: wire.DefaultPort}
}

// socketPair returns two connected, kernel-buffered stream sockets (a
// Unix socket pair: in-memory, unlike net.Pipe it buffers writes).
func socketPair() (net.Conn, net.Conn, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			return nil, nil, err
		}
		conns[i] = c
	}
	return conns[0], conns[1], nil
}

func (l *pipeListener) Dial(ctx context.Context, _ string) (net.Conn, error) {
	return l.DialFrom(ctx, l.remote)
}

// DialFrom is Dial with the accepted side's RemoteAddr at remote.
func (l *pipeListener) DialFrom(ctx context.Context, remote netip.Addr) (net.Conn, error) {
	client, server, err := socketPair()
	if err != nil {
		return nil, err
	}
	select {
	case l.conns <- addrConn{server, &net.TCPAddr{IP: remote.AsSlice(), Port: 40000}}:
		return client, nil
	case <-l.closed:
		return nil, errors.New("connection refused")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

var (
	shadow = netip.MustParseAddrPort("198.18.1.2:80")
	forged = netip.MustParseAddrPort("198.19.0.9:40000")
)

// flow is the registration of forged→shadow with port p.
func flow(p uint16) rewrite.Tuple {
	return rewrite.TupleOf(netip.AddrPortFrom(forged.Addr(), p), shadow)
}

// reply builds a shadow reply to the forged endpoint with port p.
func reply(t testing.TB, p uint16, flags uint8, plen int) []byte {
	t.Helper()
	seg := rewrite.Segment{
		Src: shadow, Dst: netip.AddrPortFrom(forged.Addr(), p), Seq: 7, Ack: 9,
		Flags: flags, Window: 1000, Payload: make([]byte, plen),
	}
	b := make([]byte, seg.Len())
	if _, err := seg.Put(b); err != nil {
		t.Fatal(err)
	}
	return b
}

type rig struct {
	t       testing.TB
	src     *capturetest.Source
	mu      sync.Mutex
	ln      *pipeListener // where the client dials; swapped to restart the agent
	agent   *Agent
	client  *Client
	replies chan []byte
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// testSecret is what a rig's agent and client share unless a test says
// otherwise: an agent without a secret refuses to run.
var testSecret = []byte("0123456789abcdef-rig-secret")

// testPools are what a rig's client announces unless a test says
// otherwise: every address of both families.
var testPools = []wire.Pool{
	{Prefix: netip.MustParsePrefix("0.0.0.0/0"), Slots: 1},
	{Prefix: netip.MustParsePrefix("::/0"), Slots: 1},
}

// newRig runs an agent and a client. An agent config without a secret and
// not InsecureNoAuth gets testSecret, and so does the client then, if it
// has none; a client without pools announces testPools.
func newRig(t testing.TB, acfg AgentConfig, ccfg ClientConfig) *rig {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if len(acfg.Secret) == 0 && len(acfg.Secrets) == 0 && !acfg.InsecureNoAuth {
		acfg.Secret = testSecret
		if ccfg.Secret == nil {
			ccfg.Secret = testSecret
		}
	}
	if ccfg.Pools == nil {
		ccfg.Pools = testPools
	}
	r := &rig{t: t, src: capturetest.New(64), ln: newPipeListener(), replies: make(chan []byte, 64)}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	r.agent = NewAgent(acfg, r.src, r.ln, log)
	ccfg.Addr = "agent"
	ccfg.Dial = func(ctx context.Context, addr string) (net.Conn, error) {
		r.mu.Lock()
		ln := r.ln
		r.mu.Unlock()
		return ln.Dial(ctx, addr)
	}
	ccfg.RetryMin = 10 * time.Millisecond
	ccfg.RetryMax = 50 * time.Millisecond
	r.client = NewClient(ccfg, func(hdr []byte) { r.replies <- append([]byte(nil), hdr...) }, log)
	r.wg.Add(2)
	go func() { defer r.wg.Done(); _ = r.agent.Run(ctx) }()
	go func() { defer r.wg.Done(); _ = r.client.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		r.wg.Wait()
	})
	return r
}

func (r *rig) waitFor(what string, cond func() bool) {
	r.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			r.t.Fatalf("timed out waiting for %s; agent %+v client %+v", what, r.agent.Stats(), r.client.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// connected waits until the client is connected and the relay knows it.
func (r *rig) connected() {
	r.t.Helper()
	r.waitFor("connection", func() bool { return r.client.Connected() && r.agent.Stats().Peers >= 1 })
}

func (r *rig) register(f rewrite.Tuple) {
	r.t.Helper()
	before := r.agent.Stats().Flows
	r.client.Register(f)
	r.waitFor("registration", func() bool { return r.agent.Stats().Flows > before })
}

func (r *rig) expectReply(want []byte) {
	r.t.Helper()
	select {
	case got := <-r.replies:
		var p rewrite.Packet
		if err := p.Decode(want); err != nil {
			r.t.Fatal(err)
		}
		if !bytes.Equal(got, p.Headers()) {
			r.t.Fatalf("relayed header differs:\n got %x\nwant %x", got, p.Headers())
		}
	case <-time.After(5 * time.Second):
		r.t.Fatalf("no reply relayed; agent %+v", r.agent.Stats())
	}
}

func (r *rig) expectNoReply() {
	r.t.Helper()
	select {
	case got := <-r.replies:
		r.t.Fatalf("unexpected reply relayed: %x", got)
	case <-time.After(50 * time.Millisecond):
	}
}

// rawPeer speaks to the agent directly.
func rawPeer(t testing.TB, r *rig) (net.Conn, *wire.Reader) {
	t.Helper()
	r.mu.Lock()
	ln := r.ln
	r.mu.Unlock()
	c, err := ln.Dial(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	return c, wire.NewReader(c)
}

// rawSession completes a copier's handshake with the agent on a raw
// connection, announcing pools and proving secret, and returns the
// connection, its reader (sealed if the session is) and its sealer.
func rawSession(t testing.TB, ln *pipeListener, name string, secret []byte, pools []wire.Pool) (net.Conn, *wire.Reader, *wire.Sealer) {
	t.Helper()
	c, err := ln.Dial(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rd := wire.NewHandshakeReader(c)
	s, err := handshake(c, rd, handshakeConfig{
		role: wire.RoleCopier, name: name, secret: secret, pools: pools, deadline: time.Now().Add(5 * time.Second),
	})
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	rd.Resize(clientReadBuf, wire.MaxFrameLen)
	return c, rd, s.seal
}

// sealed returns frame as a session with seal sends it.
func sealed(seal *wire.Sealer, frame []byte) []byte {
	if seal == nil {
		return frame
	}
	return seal.Seal(frame)
}

func expectPeerError(t testing.TB, rd *wire.Reader, code wire.ErrorCode) {
	t.Helper()
	for {
		typ, p, err := rd.Next()
		if err != nil {
			t.Fatalf("no error frame before the agent closed: %v", err)
		}
		if typ != wire.TypeError {
			continue
		}
		pe, err := wire.ParseError(p)
		if err != nil || pe.Code != code {
			t.Fatalf("error frame %v (%v), want code %v", pe, err, code)
		}
		return
	}
}

// checkDefaults checks that def, a Default*Config, fills in every
// numeric tunable (a command line takes its flag defaults from it), that
// zero is a zero config after defaults(), equal to def, and that custom is
// a config with some fields set, after defaults(), equal to want.
func checkDefaults(t testing.TB, def, zero, custom, want any, noDefault ...string) {
	t.Helper()
	v := reflect.ValueOf(def)
	for i := range v.NumField() {
		f := v.Type().Field(i)
		if slices.Contains(noDefault, f.Name) {
			continue
		}
		switch f.Type.Kind() {
		case reflect.Int, reflect.Int64:
			if v.Field(i).Int() <= 0 {
				t.Errorf("%s has no default", f.Name)
			}
		}
	}
	if !reflect.DeepEqual(zero, def) {
		t.Errorf("zero config with defaults\n got %+v\nwant %+v", zero, def)
	}
	if !reflect.DeepEqual(custom, want) {
		t.Errorf("set fields overridden by defaults\n got %+v\nwant %+v", custom, want)
	}
}
