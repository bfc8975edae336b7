package wire

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"fmt"
)

// Session keys: one AES-256-GCM key per direction,
//
//	HKDF-SHA256(secret, salt = transcript, info = "tcpshadow-v2 copier→agent" or "tcpshadow-v2 agent→copier")
//
// The GCM nonce of a frame is its index in its direction (four zero bytes,
// then the index as u64), so it is never on the wire and never repeats
// under one key; the keys are fresh for every connection because the
// transcript covers both sides' fresh nonces. GCM is used for its tag
// only: the type byte and payload are its additional data, the plaintext
// is empty, so a frame is sent as is plus TagLen bytes. With AES-NI and
// CLMUL this costs a few nanoseconds per relayed header.
const (
	infoCopierToAgent = "tcpshadow-v2 copier→agent"
	infoAgentToCopier = "tcpshadow-v2 agent→copier"
)

// SessionKeys returns the Sealer for what role sends and the Opener for
// what it receives, for a connection whose handshake had transcript and
// authenticated both sides with secret.
func SessionKeys(secret []byte, transcript [32]byte, role Role) (*Sealer, *Opener, error) {
	send, recv := infoCopierToAgent, infoAgentToCopier
	if role == RoleAgent {
		send, recv = recv, send
	}
	s, err := NewAEAD(secret, transcript, send)
	if err != nil {
		return nil, nil, err
	}
	o, err := NewAEAD(secret, transcript, recv)
	if err != nil {
		return nil, nil, err
	}
	return &Sealer{aead: s}, &Opener{aead: o}, nil
}

// NewAEAD derives an AES-256-GCM key from secret, the handshake's
// transcript and info (one label per direction and use), so that the
// control channel and the tunnel never share a key.
func NewAEAD(secret []byte, transcript [32]byte, info string) (cipher.AEAD, error) {
	key, err := hkdf.Key(sha256.New, secret, transcript[:], info, 32)
	if err != nil {
		return nil, fmt.Errorf("session key: %w", err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("session key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("session key: %w", err)
	}
	return aead, nil
}

// Sealer seals the frames one side sends, in the order it sends them. It
// is not safe for concurrent use: the connection's one writer owns it.
type Sealer struct {
	aead  cipher.AEAD
	n     uint64 // index of the next frame
	nonce [12]byte
}

// Seal turns frame, one complete frame as the Append functions and the
// batches return it, into its sealed form: it appends the tag and patches
// the length prefix to cover it. The result shares frame's array when
// frame has TagLen bytes of spare capacity (no allocation then); either
// way frame's bytes are changed. Frames must be written in the order they
// are sealed.
func (s *Sealer) Seal(frame []byte) []byte {
	be.PutUint32(frame, uint32(len(frame)-lenPrefix+TagLen))
	be.PutUint64(s.nonce[4:], s.n)
	s.n++
	return s.aead.Seal(frame, s.nonce[:], nil, frame[lenPrefix:])
}

// Opener opens the frames one side receives (Reader.SetOpener).
type Opener struct {
	aead  cipher.AEAD
	n     uint64 // index of the next frame expected
	nonce [12]byte
}

// open checks the tag at the end of body (type byte, payload, tag) and
// returns body without it. A frame that fails leaves the index where it
// was: an injected frame does not desynchronise the ones after it.
func (o *Opener) open(body []byte) ([]byte, bool) {
	if len(body) < 1+TagLen {
		return nil, false
	}
	be.PutUint64(o.nonce[4:], o.n)
	cut := len(body) - TagLen
	if _, err := o.aead.Open(nil, o.nonce[:], body[cut:], body[:cut]); err != nil {
		return nil, false
	}
	o.n++
	return body[:cut], true
}
