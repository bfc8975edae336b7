package tcpstate

import (
	"net/netip"
	"time"

	"github.com/tcpshadow/tcpshadow/rewrite"
)

// state is where a session stands with the shadow. Only setState changes
// it. The closing states follow RFC 9293 §3.3.2, the copier playing the
// client's stack:
//
//	captured SYN, or data (a synthetic SYN, scenarios 5 and 19)
//	  │ flow registered with the agent, then SYN sent
//	  ▼
//	synSent ──SYN-ACK──► established ──client's FIN, all data acked: our FIN──► finWait
//	  ▲   │                 │   │                                                  │
//	  └───┘ stale reply:    │   └──shadow's FIN, client done: our FIN──┐           │ shadow's FIN
//	   RST it, SYN again (6)│                                          ▼           │
//	                        │                        lastAck ◄──(ours not acked)───┤
//	                        │                           │ our FIN acked            │ (ours acked)
//	                        │                           ▼                          ▼
//	                        │                         closed ◄─────────────────────┘
//	                        │ shadow's FIN or RST     ▲
//	                        ▼ while the client goes on│ client's FIN or RST
//	                      shadowGone ─────────────────┘
//	                        │ client's next data (19)
//	                        └──► a fresh session in synSent; this one closed
//
// From any state an RST either way, a timeout or the buffer limit leads
// to closed (scenario 20). closed and shadowGone sessions linger to answer
// late replies with RST, then are removed and their flow deregistered.
type state uint8

const (
	stateProdOpening state = iota + 1 // prod has not accepted the connection yet: nothing sent (33)
	stateSynSent
	stateEstablished // data both ways
	stateFinWait     // our FIN (the client's) sent; the shadow's not yet received
	stateLastAck     // both FINs out; ours not yet acknowledged
	stateShadowGone  // the shadow ended; the client's data goes on a fresh connection (19)
	stateClosed
	numStates
)

var stateNames = [numStates]string{
	stateProdOpening: "prod_opening",
	stateSynSent:     "syn_sent",
	stateEstablished: "established",
	stateFinWait:     "fin_wait",
	stateLastAck:     "last_ack",
	stateShadowGone:  "shadow_gone",
	stateClosed:      "closed",
}

func (s state) String() string {
	if s == 0 || s >= numStates {
		return "invalid"
	}
	return stateNames[s]
}

// connected reports whether the shadow's connection is up: data and ACKs
// flow, timers for retransmission and pacing run.
func (s state) connected() bool {
	return s == stateEstablished || s == stateFinWait || s == stateLastAck
}

// ended reports whether the session's connection to the shadow is over.
func (s state) ended() bool { return s == stateShadowGone || s == stateClosed }

// opener says how a session's connection to the shadow was opened.
type opener uint8

const (
	openedBySYN       opener = iota // the client's own SYN, forwarded
	openedByJoin                    // a synthetic SYN for a connection older than the capture (5)
	openedByReconnect               // a synthetic SYN after the shadow closed early (19)
)

// sessionKey identifies a captured flow: the client's tuple as prod sees
// it plus the map that copies it (one flow may be copied by several maps)
// and which of its copies this is (Controls.Multiply).
type sessionKey struct {
	client rewrite.Tuple
	mapIdx uint8
	copy   uint8
}

// route is what a captured packet is handed to a worker as: its map's
// index, and its copy's in the next byte.
type route int

func routeOf(mapIdx, copyIdx uint8) route { return route(mapIdx) | route(copyIdx)<<8 }

func (r route) mapIdx() uint8  { return uint8(r) }
func (r route) copyIdx() uint8 { return uint8(r >> 8) }

// segment is one captured client segment waiting to be sent or acknowledged
// by the shadow. Its packet is already rewritten toward the shadow; only
// the ACK and timestamps change when it is (re)sent.
type segment struct {
	pb     *pktBuf
	pkt    rewrite.Packet
	opts   rewrite.Options
	seq    Seq
	end    Seq
	ack    Seq   // the client's ACK as captured, in prod's sequence space: what it had received
	capAt  int64 // capture time, wall clock ns
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
	opener opener
	// rejections counts the shadow's closes in a row, for this client
	// flow, in answer to copied data (scenario 32).
	rejections uint8
	registered bool // the forged flow is registered with the agent
	givenUp    bool // the shadow kept rejecting the flow: it lingers while the client goes on (32)
	fastOpen   bool // the client's SYN carried data, held in its worker's fastOpen until the handshake

	// small fields, kept together so the struct packs tight
	sndWS       uint8     // the shadow's window scale
	clientFin   bool      // the client's FIN was captured, at finSeq
	finSent     bool      // we sent a FIN at ourFin: the shadow acking it is no late reply
	dupAcks     uint8     // duplicate ACKs from the shadow in a row
	tsOK        bool      // timestamps negotiated with the shadow
	needAck     bool      // send an ACK at the next Flush
	prodISNOK   bool      // prod's SYN-ACK was seen
	clientAckOK bool      // clientAcked is set
	prodAckOK   bool      // prodAcked is set
	prodFin     bool      // prod closed its side
	prodDataIdx uint8     // the newest of prodData
	baseOK      bool      // prodBase is set
	resetAfter  bool      // the client or prod reset: reset the shadow once drained (30)
	resetReason EndReason // and end for this reason
	dirty       bool      // listed in the worker's dirty sessions
	// compareSkipped: the session's rounds are not kept (the worker's
	// maxComparedSessions were).
	compareSkipped bool

	// handshake
	isn       Seq
	syn       *pktBuf // the SYN, until the SYN-ACK
	synPkt    rewrite.Packet
	synOpts   rewrite.Options
	synSentAt int64
	synCapAt  int64
	startAt   int64

	// toward the shadow, in the client's own sequence space
	sndUna, sndNxt Seq
	sndWnd         int
	mss            int
	clientNxt      Seq // end of the client data queued so far
	qbuf           []segment
	rounds         *rounds // requests being paired with both responses, when comparing
	h2             *h2Conn // streams being paired, on a map compared as HTTP/2 (h2pair.go)
	qhead          int
	nsent          int // queued segments already sent: q()[:nsent]
	qBytes         int // buffer bytes held by queued segments
	finSeq         Seq
	ourFin         Seq
	rstAt          int64 // the latest RST answering a stray reply: mayReset limits them

	// from the shadow
	rcvNxt    Seq
	tsRecent  uint32 // latest TSval from the shadow, echoed in TSecr
	tsSent    uint32 // latest TSval sent; never goes backwards (PAWS)
	clientWnd uint16
	ackAt     int64 // a delayed ACK is due then (0: none pending)
	unacked   int   // shadow bytes received since our last ACK

	// prod's side, from the packets prod sends the client (scenarios
	// 28-35); with TrustInbound none arrive and the client's own packets
	// vouch for themselves.
	prodISN     Seq // from prod's SYN-ACK
	clientAcked Seq // what the client's handshake ACK acknowledged, if it came first
	prodAcked   Seq // prod's cumulative ACK of the client's stream: what prod accepted
	prodData    [prodMarks]prodMark
	// prodWaitFrom is when client data prod has not answered yet was
	// captured: prod's next data gives a response-time sample.
	prodWaitFrom int64

	// pacing (scenarios 7-10, 28-29, 35): client data with an ACK of N
	// bytes of prod's stream may go once the shadow sent N bytes of its
	// own; both counts start at their base, which moves when the pacing
	// gives up waiting (the shadow's answer was shorter, or none came).
	prodBase    Seq   // prod's stream origin: need(g) = g.ack - prodBase
	shadowBase  Seq   // the shadow's: got = rcvNxt - shadowBase
	releasedAck Seq   // the ACK of the last data released: a later one starts a round
	releasedRcv Seq   // how far the shadow's stream was then
	lastReplyAt int64 // the shadow's latest data
	lastSendAt  int64 // the copier's latest data to the shadow
	reqSentAt   int64 // the latest round's release
	reqCapAt    int64 // and its capture on prod

	// ending
	drainUntil  int64 // the client closed or reset: what prod accepted must reach the shadow by then
	vouchBy     int64 // then: what prod has not acknowledged is dropped
	resetAt     int64 // the reset's capture time
	reconnectAt int64 // shadowGone: a fresh connection may open then (backoff); 0 on the client's next data

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
	heapIdx      int // position in the timer heap; -1 absent, -2 removed
}

// prodMark is where one of prod's data segments ended and when it was
// captured: the client's think time starts when it has the data.
type prodMark struct {
	end Seq
	at  int64
}

// prodMarks is how many of prod's latest data segments a session
// remembers: the client acknowledges one of the last few.
const prodMarks = 4

// heapRemoved marks a session removed from its worker: events still
// listed for it are skipped.
const heapRemoved = -2

func (s *session) q() []segment { return s.qbuf[s.qhead:] }

// fastOpenData is the data of a client's fast-open SYN, until the
// shadow's handshake: rare enough to be kept beside the sessions rather
// than in each.
type fastOpenData struct {
	pb  *pktBuf
	lay rewrite.Layout
	len int
}

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

// removeSegAt deletes the unsent segment at index i (its buffer is the
// caller's).
func (s *session) removeSegAt(i int) {
	q := s.q()
	copy(q[i:], q[i+1:])
	q[len(q)-1] = segment{}
	s.qbuf = s.qbuf[:len(s.qbuf)-1]
}

// payloadRoom is the largest payload a segment with g's options may carry.
func (s *session) payloadRoom(g *segment) int {
	return s.mss - (g.pkt.TCP().HeaderLen() - rewrite.TCPMinHeaderLen)
}

// tsAfter compares TCP timestamps modulo 2^32 (RFC 7323 §5.3).
func tsAfter(a, b uint32) bool { return int32(a-b) > 0 }
