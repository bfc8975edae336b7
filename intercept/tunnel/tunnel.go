package tunnel

import (
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"sync/atomic"

	"github.com/tcpshadow/tcpshadow/intercept/wire"
)

// Version is the datagram format's version.
const Version = 1

// DefaultPort is the agent's tunnel port, the control channel's plus one.
const DefaultPort = wire.DefaultPort + 1

// Type is what a datagram carries.
type Type byte

const (
	// TypePacket carries one IP packet for the agent's host.
	TypePacket Type = 1
	// TypeProbe asks the agent for a TypeProbeAck (tcpshadow doctor): the
	// inner bytes are a token it sends back.
	TypeProbe Type = 2
	// TypeProbeAck answers a probe, sealed with the agent's key.
	TypeProbeAck Type = 3
)

// Header offsets.
const (
	offVersion = 0
	offType    = 1
	offSession = 4
	offCounter = 12
	offNonce   = 8 // the session's last 4 bytes, then the counter
	HeaderLen  = 20
	TagLen     = 16
	// Overhead is what sealing adds to the inner bytes.
	Overhead = HeaderLen + TagLen
	// MaxInner bounds an inner packet: a jumbo frame's IP packet.
	MaxInner = 9000
	// MaxDatagram bounds a datagram; larger ones are refused.
	MaxDatagram = MaxInner + Overhead
	// MaxProbe bounds a probe's token.
	MaxProbe = 64
)

// Key labels, one per direction; the control channel's are
// "tcpshadow-v2 copier→agent" and its reverse.
const (
	infoCopierToAgent = "tcpshadow-v2 tunnel copier→agent"
	infoAgentToCopier = "tcpshadow-v2 tunnel agent→copier"
)

var be = binary.BigEndian

// Session returns the session id of a control-channel connection.
func Session(transcript [32]byte) uint64 { return be.Uint64(transcript[:8]) }

// Keys returns the Sealer for what role sends through the tunnel and the
// Opener for what it receives, for the connection whose handshake had
// transcript and authenticated both sides with secret.
func Keys(secret []byte, transcript [32]byte, role wire.Role) (*Sealer, *Opener, error) {
	if len(secret) == 0 {
		return nil, nil, errors.New("tunnel keys: the control channel authenticates nothing (no secret)")
	}
	send, recv := infoCopierToAgent, infoAgentToCopier
	if role == wire.RoleAgent {
		send, recv = recv, send
	}
	s, err := wire.NewAEAD(secret, transcript, send)
	if err != nil {
		return nil, nil, err
	}
	o, err := wire.NewAEAD(secret, transcript, recv)
	if err != nil {
		return nil, nil, err
	}
	id := Session(transcript)
	return &Sealer{id: id, aead: s}, &Opener{id: id, aead: o}, nil
}

// Sealer seals the datagrams one side sends under one session. It is
// safe for concurrent use: each datagram takes the next counter
// atomically, so workers sharing it never reuse a nonce.
type Sealer struct {
	id   uint64
	aead cipher.AEAD
	n    atomic.Uint64 // the last counter used; the first datagram is 1
}

// Session returns the session id the datagrams carry.
func (s *Sealer) Session() uint64 { return s.id }

// Seal writes into dst the datagram of type typ carrying inner and
// returns it. dst must hold len(inner)+Overhead bytes and must not
// overlap inner; nothing is allocated.
func (s *Sealer) Seal(dst []byte, typ Type, inner []byte) []byte {
	h := dst[:HeaderLen]
	h[offVersion], h[offType], h[2], h[3] = Version, byte(typ), 0, 0
	be.PutUint64(h[offSession:], s.id)
	be.PutUint64(h[offCounter:], s.n.Add(1))
	return s.aead.Seal(h, h[offNonce:HeaderLen], inner, h)
}

// Opener opens the datagrams one side receives under one session. It is
// not safe for concurrent use: the receiving goroutine owns it and its
// window.
type Opener struct {
	id   uint64
	aead cipher.AEAD
	win  Window
}

// Session returns the session id the datagrams it opens carry.
func (o *Opener) Session() uint64 { return o.id }

// Verdict is what Open made of a datagram.
type Verdict uint8

const (
	OK        Verdict = iota
	Malformed         // too short, another version or type, nonzero reserved bytes
	TooBig            // larger than MaxDatagram
	BadMAC            // the tag does not verify (or another session's key)
	Replayed          // a counter already accepted, or older than the window
)

// Header is a view of a datagram's header, valid when Parse said so.
type Header []byte

// Parse checks what can be checked of d without a key: its size, version,
// type and reserved bytes.
func Parse(d []byte) (Header, Verdict) {
	switch {
	case len(d) > MaxDatagram:
		return nil, TooBig
	case len(d) < Overhead, d[offVersion] != Version, d[2] != 0, d[3] != 0:
		return nil, Malformed
	}
	switch Type(d[offType]) {
	case TypePacket, TypeProbe, TypeProbeAck:
	default:
		return nil, Malformed
	}
	return Header(d[:HeaderLen]), OK
}

func (h Header) Type() Type      { return Type(h[offType]) }
func (h Header) Session() uint64 { return be.Uint64(h[offSession:]) }
func (h Header) Counter() uint64 { return be.Uint64(h[offCounter:]) }

// Open verifies d, a datagram Parse accepted of this session, and
// returns its inner bytes, decrypted in place (d's bytes change). The
// counter enters the window only when the tag verified.
func (o *Opener) Open(d []byte) ([]byte, Verdict) {
	h := Header(d[:HeaderLen])
	n := h.Counter()
	if !o.win.Fresh(n) {
		return nil, Replayed
	}
	body := d[HeaderLen:]
	inner, err := o.aead.Open(body[:0], h[offNonce:HeaderLen], body, h)
	if err != nil {
		return nil, BadMAC
	}
	o.win.Mark(n)
	return inner, OK
}
