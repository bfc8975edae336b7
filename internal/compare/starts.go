package compare

import "bytes"

// Response starts: where, in a server's stream, one response ends and the
// next begins, for the protocols that answer each request in order with
// one response (Ordered). The datapath attributes the shadow's answers by
// these, the i-th start to the i-th request, since its pacing may send a
// request before the previous one's answer came back.
//
// A Starts sees each packet once, in sequence order, as far as the
// datapath kept it (a prefix of the payload) and how long it was. Redis
// and PostgreSQL replies are walked by their framing, so starts inside a
// packet are found, and a long reply spanning packets is skipped whole;
// HTTP/1 and MySQL responses are recognised at packet starts only. When
// a packet's unseen part may hide a boundary, the walker is out of sync
// until a packet begins with something that looks like a response: a
// guess, counted by the caller through Lost.
//
// It keeps no bytes and never allocates: a few counters per stream.

// Ordered reports whether p's servers answer each request with one
// response, in order: HTTP/1.x, Redis, PostgreSQL, MySQL.
func Ordered(p Protocol) bool {
	switch p {
	case HTTP1, Redis, Postgres, MySQL:
		return true
	}
	return false
}

// MaxStarts bounds the response starts Packet reports in one packet.
const MaxStarts = 16

// Starts is one server stream's response walker. The zero value walks a
// stream of the protocol given to the first Packet from its beginning.
type Starts struct {
	state  uint8
	kind   byte  // redis: the type byte of the element being read
	neg    bool  // redis: the number read is negative
	hn     uint8 // postgres: header bytes collected
	lost   bool  // out of sync: the next plausible packet start resyncs
	midRsp bool  // postgres: inside a response (no ReadyForQuery since its start)
	num    int64 // redis: the number being read
	need   int64 // redis: elements still to come in the current reply
	skip   int64 // bytes still to skip: a bulk body, a message body
	hdr    [pgHeaderLen]byte
	losses uint32
}

// Walker states.
const (
	stType uint8 = iota // redis: a type byte; postgres: a header byte
	stLine              // redis: up to the end of a simple line
	stNum               // redis: a length or count, up to its LF
	stBody              // skipping skip bytes
)

// OutOfSync reports whether the walker lost sync with its stream and has
// not found it again.
func (t *Starts) OutOfSync() bool { return t.lost }

// Lost returns how many times the walker lost sync with its stream.
func (t *Starts) Lost() uint32 { return t.losses }

// Packet takes one packet of the stream, in order: b is what was kept of
// its payload (a prefix), n the payload's full length. It writes the
// offsets in b of the responses starting in the packet to offs (at most
// len(offs) of them) and returns how many it wrote. Bytes before the
// first offset continue the previous response.
func (t *Starts) Packet(p Protocol, b []byte, n int, offs []uint16) int {
	if n < len(b) {
		n = len(b)
	}
	switch p {
	case Redis:
		return t.redis(b, n, offs)
	case Postgres:
		return t.postgres(b, n, offs)
	case HTTP1:
		return atPacketStart(looksHTTP1(b), offs)
	case MySQL:
		return atPacketStart(looksMySQL(b), offs)
	}
	return 0
}

func atPacketStart(ok bool, offs []uint16) int {
	if !ok || len(offs) == 0 {
		return 0
	}
	offs[0] = 0
	return 1
}

// looksHTTP1 reports whether b begins a status line, as far as it goes.
func looksHTTP1(b []byte) bool {
	const proto = "HTTP/1."
	k := min(len(b), len(proto))
	return k > 0 && string(b[:k]) == proto[:k]
}

// looksMySQL reports whether b begins a response packet: a plausible
// length and the sequence number of a server's first packet in an
// exchange (0: the greeting, 1: a command's answer, 2: the answer to
// the client's handshake response).
func looksMySQL(b []byte) bool {
	if len(b) < mysqlHeaderLen+1 {
		return false
	}
	n := int(b[0]) | int(b[1])<<8 | int(b[2])<<16
	return n > 0 && b[3] <= 2
}

// lose marks the walker out of sync.
func (t *Starts) lose() {
	if !t.lost {
		t.losses++
	}
	*t = Starts{lost: true, losses: t.losses}
}

// resync starts over at a packet that begins with first, if it looks
// like a response's first byte; it reports whether it did.
func (t *Starts) resync(ok bool) bool {
	if !ok {
		return false
	}
	*t = Starts{losses: t.losses}
	return true
}

func isRESPType(c byte) bool { return c != 0 && bytes.IndexByte([]byte("+-:$*_,#(=%~>|!"), c) >= 0 }

// redis walks RESP replies: a reply starts at a type byte when no
// element of the previous one is still to come.
func (t *Starts) redis(b []byte, n int, offs []uint16) int {
	if t.lost && !t.resync(len(b) > 0 && isRESPType(b[0])) {
		return 0
	}
	k := 0
	for i := 0; i < len(b); {
		switch t.state {
		case stType:
			c := b[i]
			if t.need == 0 {
				if k < len(offs) {
					offs[k] = uint16(i)
					k++
				}
				t.need = 1
			}
			t.need--
			t.kind, t.num, t.neg = c, 0, false
			switch c {
			case '+', '-', ':', '_', ',', '#', '(':
				t.state = stLine
			case '$', '!', '=', '*', '%', '~', '>', '|':
				t.state = stNum
			default:
				t.lose()
				return k
			}
			i++
		case stLine:
			j := bytes.IndexByte(b[i:], '\n')
			if j < 0 {
				i = len(b)
				continue
			}
			i += j + 1
			t.state = stType
		case stNum:
			c := b[i]
			i++
			switch {
			case c >= '0' && c <= '9':
				if t.num > 1<<40 {
					t.lose()
					return k
				}
				t.num = t.num*10 + int64(c-'0')
			case c == '-' && t.num == 0:
				t.neg = true
			case c == '?': // RESP3 streamed aggregate or string: walked no further
				t.lose()
				return k
			case c == '\r':
			case c == '\n':
				t.state = stType
				if t.neg {
					break // a null: nothing follows
				}
				switch t.kind {
				case '$', '!', '=':
					t.skip, t.state = t.num+2, stBody
				case '%', '|':
					t.need += 2 * t.num
				default:
					t.need += t.num
				}
			default:
				t.lose()
				return k
			}
		case stBody:
			step := int(min(t.skip, int64(len(b)-i)))
			i += step
			t.skip -= int64(step)
			if t.skip == 0 {
				t.state = stType
			}
		}
	}
	t.unseen(n - len(b))
	return k
}

// unseen accounts for the part of a packet the datapath did not keep: a
// body being skipped covers it, anything else may hide a boundary.
func (t *Starts) unseen(rest int) {
	if rest <= 0 {
		return
	}
	if t.state == stBody && t.skip >= int64(rest) {
		t.skip -= int64(rest)
		if t.skip == 0 {
			t.state = stType
		}
		return
	}
	t.lose()
}

// pgReadyForQuery ends every response of PostgreSQL's: to the startup, a
// simple query, a Sync.
const pgReadyForQuery = 'Z'

// postgres walks backend messages: a response starts with the first
// message after a ReadyForQuery (or the stream's first).
func (t *Starts) postgres(b []byte, n int, offs []uint16) int {
	if t.lost {
		ok := len(b) > 0 && isPGBackendType(b[0]) && b[0] != 'D' && b[0] != 'd'
		if !t.resync(ok) {
			return 0
		}
	}
	k := 0
	for i := 0; i < len(b); {
		if t.state == stBody {
			step := int(min(t.skip, int64(len(b)-i)))
			i += step
			t.skip -= int64(step)
			if t.skip == 0 {
				t.state = stType
			}
			continue
		}
		if t.hn == 0 {
			if !isPGBackendType(b[i]) {
				t.lose()
				return k
			}
			if !t.midRsp {
				if k < len(offs) {
					offs[k] = uint16(i)
					k++
				}
				t.midRsp = true
			}
		}
		t.hdr[t.hn] = b[i]
		t.hn++
		i++
		if t.hn < pgHeaderLen {
			continue
		}
		t.hn = 0
		l := int64(t.hdr[1])<<24 | int64(t.hdr[2])<<16 | int64(t.hdr[3])<<8 | int64(t.hdr[4])
		if l < 4 || l > pgMaxMessageLen {
			t.lose()
			return k
		}
		if t.hdr[0] == pgReadyForQuery {
			t.midRsp = false
		}
		if t.skip = l - 4; t.skip > 0 {
			t.state = stBody
		}
	}
	t.unseen(n - len(b))
	return k
}
