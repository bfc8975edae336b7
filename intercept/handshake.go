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

	"github.com/tcpshadow/tcpshadow/intercept/wire"
)

// ErrTLS wraps a failed TLS handshake on the control channel: a
// certificate not trusted, a name that does not match, or a peer that
// speaks no TLS.
var ErrTLS = errors.New("tls handshake")

// handshakeTimeout bounds a peer's hello and authentication (and the TLS
// handshake before them, when there is one).
const handshakeTimeout = 5 * time.Second

// tlsClient wraps conn in TLS with cfg, if set, and completes the TLS
// handshake: the control channel then runs, hello and authentication
// included, inside it. On failure conn is closed: the caller only has the
// nil it returned.
func tlsClient(ctx context.Context, conn net.Conn, cfg *tls.Config) (net.Conn, error) {
	if cfg == nil {
		return conn, nil
	}
	return tlsHandshake(ctx, conn, tls.Client(conn, cfg))
}

// tlsServer is tlsClient's agent side; it too closes conn on failure.
func tlsServer(ctx context.Context, conn net.Conn, cfg *tls.Config) (net.Conn, error) {
	if cfg == nil {
		return conn, nil
	}
	return tlsHandshake(ctx, conn, tls.Server(conn, cfg))
}

func tlsHandshake(ctx context.Context, conn net.Conn, tc *tls.Conn) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("%w: %w", ErrTLS, err)
	}
	return tc, nil
}

// ErrAuth is returned when a peer fails authentication.
var ErrAuth = errors.New("authentication failed")

// peerInfo is what the handshake learned about the other side.
type peerInfo struct {
	hello wire.Hello
}

// handshake runs the symmetric opening on conn: both sides send Hello, read
// the other's, check the version and, when either side requires it, prove
// knowledge of the shared secret over the other's nonce (both ways, so the
// secret never crosses the wire). It returns a peer error frame already
// sent to the other side as a *wire.PeerError in the error chain.
func handshake(conn net.Conn, r *wire.Reader, role wire.Role, name string, secret []byte) (peerInfo, error) {
	if err := conn.SetDeadline(time.Now().Add(handshakeTimeout)); err != nil {
		return peerInfo{}, err
	}
	defer conn.SetDeadline(time.Time{})
	own := wire.Hello{Version: wire.Version, Role: role, Name: name}
	if len(secret) > 0 {
		own.Caps |= wire.CapAuth
	}
	if _, err := io.ReadFull(rand.Reader, own.Nonce[:]); err != nil {
		return peerInfo{}, fmt.Errorf("nonce: %w", err)
	}
	if _, err := conn.Write(wire.AppendHello(nil, &own)); err != nil {
		return peerInfo{}, fmt.Errorf("send hello: %w", err)
	}
	typ, p, err := r.Next()
	if err != nil {
		if errors.Is(err, wire.ErrFrameTooLarge) || errors.Is(err, wire.ErrMalformed) {
			return peerInfo{}, refuse(conn, wire.CodeProtocol, "not a tcpshadow hello: "+err.Error())
		}
		return peerInfo{}, fmt.Errorf("read hello: %w", err)
	}
	if typ == wire.TypeError {
		return peerInfo{}, peerErr(p)
	}
	if typ != wire.TypeHello {
		return peerInfo{}, refuse(conn, wire.CodeProtocol, fmt.Sprintf("expected hello, got %v", typ))
	}
	peer, err := wire.ParseHello(p)
	if err != nil {
		return peerInfo{}, refuse(conn, wire.CodeProtocol, "bad hello: "+err.Error())
	}
	if peer.Version != wire.Version {
		return peerInfo{}, refuse(conn, wire.CodeVersion,
			fmt.Sprintf("version mismatch: we speak %d, peer %q speaks %d", wire.Version, peer.Name, peer.Version))
	}
	if peer.Role == role {
		return peerInfo{}, refuse(conn, wire.CodeProtocol, fmt.Sprintf("peer is also a %v", role))
	}
	info := peerInfo{hello: peer}
	needAuth := own.Caps&wire.CapAuth != 0 || peer.Caps&wire.CapAuth != 0
	if !needAuth {
		return info, nil
	}
	if len(secret) == 0 {
		return info, refuse(conn, wire.CodeAuth, "peer requires authentication and no secret is configured here")
	}
	if peer.Caps&wire.CapAuth == 0 {
		return info, refuse(conn, wire.CodeAuth, "peer does not authenticate; refusing an unauthenticated channel")
	}
	mac := wire.ComputeMAC(secret, role, peer.Nonce, own.Nonce)
	if _, err := conn.Write(wire.AppendAuth(nil, mac)); err != nil {
		return info, fmt.Errorf("send auth: %w", err)
	}
	typ, p, err = r.Next()
	if err != nil {
		return info, fmt.Errorf("read auth: %w", err)
	}
	if typ == wire.TypeError {
		return info, peerErr(p)
	}
	if typ != wire.TypeAuth {
		return info, refuse(conn, wire.CodeProtocol, fmt.Sprintf("expected auth, got %v", typ))
	}
	theirs, err := wire.ParseAuth(p)
	if err != nil || !wire.VerifyMAC(secret, peer.Role, own.Nonce, peer.Nonce, theirs) {
		err := refuse(conn, wire.CodeAuth, "wrong secret")
		return info, fmt.Errorf("%w: %w", ErrAuth, err)
	}
	return info, nil
}

// refuse tells the peer why the connection ends and returns that reason.
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
// reason behind it: an agent that refuses at once (allowlist) writes an
// Error frame and closes, which can fail our hello before we read it. It
// reads only briefly, and with a fresh Reader: the handshake's either read
// nothing (its write failed) or failed on a connection unusable anyway.
func refusalBehind(conn net.Conn, err error) error {
	var pe *wire.PeerError
	if errors.As(err, &pe) {
		return err
	}
	if conn.SetReadDeadline(time.Now().Add(200*time.Millisecond)) != nil {
		return err
	}
	typ, p, rerr := wire.NewReader(conn).Next()
	if rerr != nil || typ != wire.TypeError {
		return err
	}
	return peerErr(p)
}
