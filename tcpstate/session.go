package tcpstate

import (
	"net/netip"
	"time"

	"github.com/tcpshadow/tcpshadow/rewrite"
)

// state is where a session stands with the shadow.
//
//	captured SYN (or data: synthetic SYN, scenario 5)
//	     │ flow registered with the agent, then SYN sent
//	     ▼
//	synSent ──SYN-ACK relayed──► established ──FIN both ways──┐
//	  │  ▲                           │                        │
//	  │  └─stale reply: RST it, SYN again (scenario 6)        │
//	  │ handshake timeout,           │ RST either way, timeouts,
//	  │ client RST                   │ buffer limit           │
//	  ▼                              ▼                        ▼
//	closed: lingers to answer late replies with RST, then removed and
//	the flow deregistered (scenario 20)
type state uint8

const (
	stateSynSent state = iota + 1
	stateEstablished
	stateClosed
)

func (s state) String() string {
	switch s {
	case stateSynSent:
		return "syn-sent"
	case stateEstablished:
		return "established"
	case stateClosed:
		return "closed"
	}
	return "invalid"
}

// sessionKey identifies a captured flow: the client's tuple as prod sees
// it plus the map that copies it (one flow may be copied by several maps).
type sessionKey struct {
	client rewrite.Tuple
	mapIdx uint8
}

// segment is one captured client segment waiting to be sent or acknowledged
// by the shadow. Its packet is already rewritten toward the shadow; only
// the ACK and timestamps change when it is (re)sent.
type segment struct {
	pb     *pktBuf
	pkt    rewrite.Packet
	opts   rewrite.Options
	seq    Seq
	end    Seq
	ack    Seq   // the client's ACK as captured, in prod's sequence space
	capAt  int64 // capture time, wall clock ns
	expect int   // >0: a request start; bytes prod answered before it
	sentAt int64 // 0 until sent
	resent bool
}

func (g *segment) len() int { return g.end.Sub(g.seq) }

// session plays the client's side of one connection toward the shadow.
// It is owned by one worker; nothing here is safe for concurrent use.
type session struct {
	key    sessionKey
	forged rewrite.Tuple  // copier → shadow
	src    netip.AddrPort // forged client endpoint
	dst    netip.AddrPort // shadow endpoint
	state  state
	joined bool // started from a synthetic SYN (scenarios 5, 19)
	// reconnectable: the shadow ended the connection while the client
	// went on; the client's next data opens a fresh one (scenario 19).
	reconnectable bool
	reconnects    int

	// handshake
	isn       Seq
	syn       *pktBuf
	synPkt    rewrite.Packet
	synOpts   rewrite.Options
	synSentAt int64
	synCapAt  int64
	startAt   int64

	// toward the shadow, in the client's own sequence space
	sndUna, sndNxt Seq
	sndWnd         int
	sndWS          uint8
	mss            int
	clientNxt      Seq // end of the client data queued so far
	qbuf           []segment
	qhead          int
	nsent          int // queued segments already sent: q()[:nsent]
	qBytes         int // buffer bytes held by queued segments
	finSeen        bool
	finSeq         Seq  // where the client's FIN is
	finSent        bool // we sent a FIN, at ourFin
	ourFin         Seq
	dupAcks        int

	// from the shadow
	rcvNxt    Seq
	shadowFin bool
	tsOK      bool
	tsRecent  uint32 // latest TSval from the shadow, echoed in TSecr
	tsSent    uint32 // latest TSval sent; never goes backwards (PAWS)
	clientWnd uint16
	needAck   bool  // send an ACK at the next Flush
	ackAt     int64 // a delayed ACK is due then (0: none pending)
	unacked   int   // shadow bytes received since our last ACK

	// pacing (scenarios 7-10)
	prodAck     Seq
	prodAckOK   bool
	respBytes   int
	lastReplyAt int64
	reqSentAt   int64
	reqCapAt    int64
	greetWait   bool

	// timers
	srtt, rttvar time.Duration
	rto          time.Duration
	rtoAt        int64
	retries      int
	paceAt       int64
	gapSince     int64
	lastSeen     int64
	lingerEnd    int64
	timerAt      int64
	heapIdx      int
	dirty        bool
}

func (s *session) q() []segment { return s.qbuf[s.qhead:] }

// ackSent notes that a segment acknowledging everything received is
// leaving: no ACK is owed any more.
func (s *session) ackSent() { s.needAck, s.ackAt, s.unacked = false, 0, 0 }

// pushSeg appends g at the end of the queue.
func (s *session) pushSeg(g segment) {
	if len(s.qbuf) == cap(s.qbuf) && s.qhead > 0 {
		n := copy(s.qbuf, s.qbuf[s.qhead:])
		clear(s.qbuf[n:])
		s.qbuf, s.qhead = s.qbuf[:n], 0
	}
	s.qbuf = append(s.qbuf, g)
}

// insertSeg puts g at index i of q().
func (s *session) insertSeg(i int, g segment) {
	s.pushSeg(segment{})
	q := s.q()
	copy(q[i+1:], q[i:len(q)-1])
	q[i] = g
}

// popSeg removes the first queued segment and returns its buffer.
func (s *session) popSeg() *pktBuf {
	g := &s.qbuf[s.qhead]
	pb := g.pb
	*g = segment{}
	s.qhead++
	if s.nsent > 0 {
		s.nsent--
	}
	if s.qhead == len(s.qbuf) {
		s.qbuf, s.qhead = s.qbuf[:0], 0
	}
	return pb
}

// tsAfter compares TCP timestamps modulo 2^32 (RFC 7323 §5.3).
func tsAfter(a, b uint32) bool { return int32(a-b) > 0 }
