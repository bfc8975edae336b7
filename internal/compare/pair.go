package compare

import "net/netip"

// Bounds of a Pair's copied bytes.
const (
	// RequestHeadLen is how many of a request's first bytes a Pair keeps:
	// enough for an HTTP request line, a Redis command name, an SQL verb,
	// or an HTTP/2 connection preface followed by a HEADERS frame.
	RequestHeadLen = 128
	// MaxPrefix bounds the response prefix (--compare-prefix): how many of
	// a response's first payload bytes a Pair keeps per side.
	MaxPrefix = 256
	// DefaultPrefix is the response prefix when none is configured.
	DefaultPrefix = 64
)

// Outcome is how one side's response ended, as the datapath saw it.
type Outcome uint8

const (
	// NoAnswer: no response byte within the datapath's timeout. The zero
	// value, so a side the datapath never filled in counts as unanswered.
	NoAnswer Outcome = iota
	// Answered: response bytes arrived; the head holds the first of them.
	Answered
	// Reset: the server reset the connection before answering.
	Reset
	// Closed: the server closed the connection (FIN) before answering.
	Closed
	numOutcomes
)

var outcomeNames = [numOutcomes]string{NoAnswer: "timeout", Answered: "answered", Reset: "reset", Closed: "closed"}

func (o Outcome) String() string {
	if o < numOutcomes {
		return outcomeNames[o]
	}
	return "garbage"
}

// Response is one side's answer to a request.
type Response struct {
	// Head is the response's first payload bytes, HeadLen of them valid
	// (clamped to the array on read): fewer when the payload was shorter,
	// or cut at the prefix length.
	Head    [MaxPrefix]byte
	HeadLen uint16
	Outcome Outcome
	// Sent is when the request's last byte went to this side's server:
	// seen on the wire for prod, sent by the copier for the shadow.
	// FirstByte is when the response's first byte came back. Both are
	// nanoseconds on one monotonic clock of the producer's choosing; only
	// their difference is used. FirstByte is ignored unless Answered.
	Sent, FirstByte int64
}

// Pair is one request with prod's and the shadow's responses: a fixed-size
// value holding copies only, so the datapath can hand it over by value
// without allocating and without keeping any packet buffer alive.
type Pair struct {
	// Request is the request's first bytes, RequestLen of them valid.
	Request    [RequestHeadLen]byte
	RequestLen uint16
	Prod       Response
	Shadow     Response
	// Map is the index of the copy map (the order given to New).
	Map uint16
	// Client is prod's client: who sent the request.
	Client netip.AddrPort
}

// Side names prod or shadow in labels and in the snapshot.
type Side uint8

const (
	Prod Side = iota
	Shadow
	numSides
)

var sideNames = [numSides]string{"prod", "shadow"}

func (s Side) String() string { return sideNames[s] }

// SetRequest copies b (its first RequestHeadLen bytes) as the request head.
func (p *Pair) SetRequest(b []byte) { p.RequestLen = uint16(copy(p.Request[:], b)) }

// SetHead copies b (its first MaxPrefix bytes) as the response head and
// marks the response answered.
func (r *Response) SetHead(b []byte) {
	r.HeadLen = uint16(copy(r.Head[:], b))
	r.Outcome = Answered
}

// AppendRequest adds request bytes as they arrive, packet by packet, up
// to RequestHeadLen in all.
func (p *Pair) AppendRequest(b []byte) {
	n := min(int(p.RequestLen), RequestHeadLen)
	p.RequestLen = uint16(n + copy(p.Request[n:], b))
}

// Append adds response payload bytes as they arrive, packet by packet, up
// to limit in all (the prefix; at most MaxPrefix), and marks the response
// answered; the first bytes stamp FirstByte with now. Bytes past the
// limit are ignored, so the caller need not count.
func (r *Response) Append(b []byte, limit int, now int64) {
	if len(b) == 0 {
		return
	}
	if r.Outcome != Answered {
		r.Outcome, r.FirstByte, r.HeadLen = Answered, now, 0
	}
	limit = max(0, min(limit, MaxPrefix))
	n := min(int(r.HeadLen), limit)
	r.HeadLen = uint16(n + copy(r.Head[n:limit], b))
}

func (p *Pair) request() []byte { return p.Request[:min(int(p.RequestLen), RequestHeadLen)] }

func (r *Response) head() []byte { return r.Head[:min(int(r.HeadLen), MaxPrefix)] }

func (p *Pair) side(s Side) *Response {
	if s == Shadow {
		return &p.Shadow
	}
	return &p.Prod
}
