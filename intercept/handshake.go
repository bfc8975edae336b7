package intercept

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/tcpshadow/tcpshadow/intercept/tunnel"
	"github.com/tcpshadow/tcpshadow/intercept/wire"
)

// ErrTLS wraps a failed TLS handshake on the control channel: a
// certificate not trusted, a name that does not match, or a peer that
// speaks no TLS.
var ErrTLS = errors.New("tls handshake")

// handshakeTimeout bounds everything a connection does before it is a
// peer: the TLS handshake, when there is one, and the hellos and
// authentication together, under one deadline.
const handshakeTimeout = 5 * time.Second

// tlsClient wraps conn in TLS with cfg, if set, and completes the TLS
// handshake by deadline: the control channel then runs, hello and
// authentication included, inside it. On failure conn is closed: the
// caller only has the nil it returned.
func tlsClient(ctx context.Context, conn net.Conn, cfg *tls.Config, deadline time.Time) (net.Conn, error) {
	if cfg == nil {
		return conn, nil
	}
	return tlsHandshake(ctx, conn, tls.Client(conn, cfg), deadline)
}

// tlsServer is tlsClient's agent side; it too closes conn on failure.
func tlsServer(ctx context.Context, conn net.Conn, cfg *tls.Config, deadline time.Time) (net.Conn, error) {
	if cfg == nil {
		return conn, nil
	}
	return tlsHandshake(ctx, conn, tls.Server(conn, cfg), deadline)
}

func tlsHandshake(ctx context.Context, conn net.Conn, tc *tls.Conn, deadline time.Time) (net.Conn, error) {
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("%w: %w", ErrTLS, err)
	}
	return tc, nil
}

// ErrAuth is returned when a peer fails authentication.
var ErrAuth = errors.New("authentication failed")

// channelLabel names the TLS exported keying material the transcript binds.
const channelLabel = "EXPORTER-tcpshadow-channel-v2"

// handshakeConfig is one side's part in a handshake.
type handshakeConfig struct {
	role wire.Role
	name string // announced: by a copier in its hello, by an agent in its auth (or its hello, without auth)
	// secret authenticates this side; an agent may instead hold one per
	// copy daemon name in secrets. Neither: no authentication.
	secret  []byte
	secrets map[string][]byte
	// flowIdle and pools are a copier's announcement (Hello), replyPrefix
	// what it asks of each reply's payload (0..wire.MaxReplyPrefix).
	flowIdle    time.Duration
	pools       []wire.Pool
	replyPrefix uint16
	h2Ports     []uint16
	deadline    time.Time // for the whole handshake
}

func (c *handshakeConfig) authenticates() bool { return len(c.secret) > 0 || len(c.secrets) > 0 }

// session is what a completed handshake established.
type session struct {
	hello wire.Hello // the peer's
	name  string     // the peer's name: from its hello, or an agent's auth
	// seal seals what this side sends; nil when frames are not sealed
	// (TLS, or no authentication). The Reader has the matching Opener.
	seal *wire.Sealer
	// secret and transcript are what the tunnel's keys derive from
	// (package tunnel); secret is nil without authentication.
	secret     []byte
	transcript [32]byte
}

// tunnelKeys returns the tunnel's keys of this session for role; an error
// when the session authenticated nothing.
func (s *session) tunnelKeys(role wire.Role) (*tunnel.Sealer, *tunnel.Opener, error) {
	return tunnel.Keys(s.secret, s.transcript, role)
}

// handshake runs the opening on conn, reading with r (a handshake
// Reader): both sides send a Hello and read the other's, which must be
// of this version and of the counterpart's role. When either side requires
// it, the copier then proves the secret over the transcript of both hellos
// (bound to the TLS channel, if any); the agent checks the proof and only
// then proves it too, with its name. On plain TCP both sides then seal
// every frame: handshake installs the Opener on r and returns the Sealer.
// A refusal sent to the other side is a *wire.PeerError in the error's
// chain.
func handshake(conn net.Conn, r *wire.Reader, c handshakeConfig) (session, error) {
	if err := conn.SetDeadline(c.deadline); err != nil {
		return session{}, err
	}
	defer conn.SetDeadline(time.Time{})
	own := wire.Hello{Version: wire.Version, Role: c.role}
	if c.authenticates() {
		own.Caps |= wire.CapAuth
	}
	// An agent names itself only to a peer that proved the secret.
	if c.role == wire.RoleCopier || !c.authenticates() {
		own.Name = c.name
	}
	if c.role == wire.RoleCopier {
		own.FlowIdle, own.Pools, own.ReplyPrefix, own.H2Ports = c.flowIdle, c.pools, c.replyPrefix, c.h2Ports
	}
	if _, err := io.ReadFull(rand.Reader, own.Nonce[:]); err != nil {
		return session{}, fmt.Errorf("nonce: %w", err)
	}
	ownFrame := wire.AppendHello(nil, &own)
	if _, err := conn.Write(ownFrame); err != nil {
		return session{}, fmt.Errorf("send hello: %w", err)
	}
	typ, p, err := r.Next()
	if err != nil {
		if errors.Is(err, wire.ErrFrameTooLarge) || errors.Is(err, wire.ErrMalformed) {
			return session{}, refuse(conn, wire.CodeProtocol, "not a tcpshadow hello: "+err.Error())
		}
		return session{}, fmt.Errorf("read hello: %w", err)
	}
	if typ == wire.TypeError {
		return session{}, peerErr(p)
	}
	if typ != wire.TypeHello {
		return session{}, refuse(conn, wire.CodeProtocol, fmt.Sprintf("expected hello, got %v", typ))
	}
	peerPayload := append([]byte(nil), p...)
	peer, err := wire.ParseHello(peerPayload)
	if err != nil {
		return session{}, refuse(conn, wire.CodeProtocol, "bad hello: "+err.Error())
	}
	if peer.Version != wire.Version {
		return session{}, refuse(conn, wire.CodeVersion,
			fmt.Sprintf("version mismatch: this side speaks version %d, the peer version %d", wire.Version, peer.Version))
	}
	if want := counterpart(c.role); peer.Role != want {
		return session{}, refuse(conn, wire.CodeProtocol, fmt.Sprintf("peer says it is a %v; want a %v", peer.Role, want))
	}
	if c.role == wire.RoleAgent && peer.ReplyPrefix > wire.MaxReplyPrefix {
		return session{}, refuse(conn, wire.CodeNotAllowed, fmt.Sprintf(
			"reply prefix of %d bytes asked; the agent relays at most %d bytes of each reply's payload", peer.ReplyPrefix, wire.MaxReplyPrefix))
	}
	s := session{hello: peer, name: peer.Name}
	if !c.authenticates() && peer.Caps&wire.CapAuth == 0 {
		return s, nil
	}
	if !c.authenticates() {
		return s, refuse(conn, wire.CodeAuth, "peer requires authentication and no secret is configured here")
	}
	if peer.Caps&wire.CapAuth == 0 {
		return s, refuse(conn, wire.CodeAuth, "peer does not authenticate; refusing an unauthenticated channel")
	}
	var channel []byte
	tc, isTLS := conn.(*tls.Conn)
	if isTLS {
		cs := tc.ConnectionState()
		if channel, err = cs.ExportKeyingMaterial(channelLabel, nil, 32); err != nil {
			return s, fmt.Errorf("tls channel binding: %w", err)
		}
	}
	copierHello, agentHello := ownFrame[5:], peerPayload
	if c.role == wire.RoleAgent {
		copierHello, agentHello = agentHello, copierHello
	}
	tr := wire.Transcript(copierHello, agentHello, channel)
	var secret []byte
	if c.role == wire.RoleCopier {
		secret = c.secret
		err = copierAuth(conn, r, secret, tr, &s)
	} else {
		secret, err = agentAuth(conn, r, c, tr, peer.Name)
	}
	if err != nil {
		return s, err
	}
	s.secret, s.transcript = secret, tr
	if !isTLS {
		seal, open, err := wire.SessionKeys(secret, tr, c.role)
		if err != nil {
			return s, err
		}
		s.seal = seal
		r.SetOpener(open)
	}
	return s, nil
}

func counterpart(r wire.Role) wire.Role {
	if r == wire.RoleCopier {
		return wire.RoleAgent
	}
	return wire.RoleCopier
}

// copierAuth proves the secret first, then checks the agent's proof and
// learns its name.
func copierAuth(conn net.Conn, r *wire.Reader, secret []byte, tr [32]byte, s *session) error {
	if _, err := conn.Write(wire.AppendAuth(nil, wire.ComputeMAC(secret, wire.RoleCopier, tr, ""), "")); err != nil {
		return fmt.Errorf("send auth: %w", err)
	}
	auth, err := readAuth(conn, r)
	if err != nil {
		return err
	}
	if !wire.VerifyMAC(secret, wire.RoleAgent, tr, auth.Name, auth.MAC) {
		return fmt.Errorf("%w: %w", ErrAuth, refuse(conn, wire.CodeAuth, "wrong secret"))
	}
	s.name = auth.Name
	return nil
}

// agentAuth checks the copier's proof with the secret of its name (or the
// shared one), then proves it too; it returns the secret.
func agentAuth(conn net.Conn, r *wire.Reader, c handshakeConfig, tr [32]byte, peerName string) ([]byte, error) {
	auth, err := readAuth(conn, r)
	if err != nil {
		return nil, err
	}
	secret := c.secret
	if c.secrets != nil {
		var ok bool
		if secret, ok = c.secrets[peerName]; !ok {
			// The peer is told what a wrong secret tells it; the log says more.
			err := refuse(conn, wire.CodeAuth, "wrong secret")
			return nil, fmt.Errorf("%w: no secret for copy daemon %q: %w", ErrAuth, peerName, err)
		}
	}
	if !wire.VerifyMAC(secret, wire.RoleCopier, tr, auth.Name, auth.MAC) {
		return nil, fmt.Errorf("%w: %w", ErrAuth, refuse(conn, wire.CodeAuth, "wrong secret"))
	}
	if _, err := conn.Write(wire.AppendAuth(nil, wire.ComputeMAC(secret, wire.RoleAgent, tr, c.name), c.name)); err != nil {
		return nil, fmt.Errorf("send auth: %w", err)
	}
	return secret, nil
}

func readAuth(conn net.Conn, r *wire.Reader) (wire.Auth, error) {
	typ, p, err := r.Next()
	if err != nil {
		return wire.Auth{}, fmt.Errorf("read auth: %w", err)
	}
	if typ == wire.TypeError {
		return wire.Auth{}, peerErr(p)
	}
	if typ != wire.TypeAuth {
		return wire.Auth{}, refuse(conn, wire.CodeProtocol, fmt.Sprintf("expected auth, got %v", typ))
	}
	auth, err := wire.ParseAuth(p)
	if err != nil {
		return wire.Auth{}, refuse(conn, wire.CodeProtocol, "bad auth: "+err.Error())
	}
	return auth, nil
}

// refuse tells the peer why the connection ends and returns that reason.
// It is for the handshake only: afterwards frames are sealed, and the
// connection's writer sends them.
func refuse(conn net.Conn, code wire.ErrorCode, msg string) error {
	_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = conn.Write(wire.AppendError(nil, code, msg))
	return &wire.PeerError{Code: code, Msg: "refused: " + msg}
}

func peerErr(p []byte) error {
	pe, err := wire.ParseError(p)
	if err != nil {
		return fmt.Errorf("bad error frame from peer: %w", err)
	}
	return pe
}

// refusalBehind returns err, a copier's failed handshake, or the peer's
// reason behind it: an agent that refuses at once (allowlist, overload)
// writes an Error frame and closes, which can fail our hello before we
// read it. It reads only briefly, and with a fresh Reader: the
// handshake's either read nothing (its write failed) or failed on a
// connection unusable anyway.
func refusalBehind(conn net.Conn, err error) error {
	var pe *wire.PeerError
	if errors.As(err, &pe) {
		return err
	}
	if conn.SetReadDeadline(time.Now().Add(200*time.Millisecond)) != nil {
		return err
	}
	typ, p, rerr := wire.NewHandshakeReader(conn).Next()
	if rerr != nil || typ != wire.TypeError {
		return err
	}
	return peerErr(p)
}
