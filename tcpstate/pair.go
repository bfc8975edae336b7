package tcpstate

import (
	"sync"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/compare"
)

// Pairing: each request, as the pacing delimits it (a round: client data
// whose ACK says the client had more of prod's answer than before), is
// paired with prod's response, captured on prod, and the shadow's,
// relayed by the agent, and handed to the comparison (scenario 42). The
// two sides see the same rounds in the same order: prod's as they are
// captured, the shadow's as they are released to it, usually later. So a
// session keeps a short FIFO of rounds: prod's bytes go to the round
// whose request they answer by sequence (below), and a round is handed
// over once the shadow is done with it, or when the session ends.
//
// The shadow's bytes: for the protocols that answer each request in
// order with one response (compare.Ordered: HTTP/1, Redis, PostgreSQL,
// MySQL), the i-th response start (found by a compare.Starts walking the
// relayed prefixes) goes to the oldest released round without one, and
// the bytes after a start to the round that got it: the pacing, crediting
// a longer answer to the next rounds, may release a round before the
// shadow's answer to the previous one came, so arrival says nothing. Such
// a round is over on the shadow's side once a later one got a start. For
// other protocols, and while the walker is out of sync, the shadow's
// bytes go to the newest released round, which is over once a later one
// is released.
//
// Latencies: prod's from the capture of the request's last byte to that
// of prod's first response byte, both capture timestamps; the shadow's
// from the copier sending the request's last byte to the relayed reply's
// arrival, both the worker's clock.
//
// Pairing costs nothing when comparison is off. When on, it allocates a
// session's rounds once (pooled), never per packet, and for at most
// maxComparedSessions sessions per worker: others are not compared,
// counted.

// maxPendingRounds bounds the rounds a session holds before the shadow's
// side settles them: the shadow lagging further makes the oldest go
// unpaired, counted (compare_overflow).
const maxPendingRounds = 16

// maxComparedSessions bounds, per worker, the sessions whose rounds are
// kept: about 16 KiB each, 16 MiB a worker at most; past it sessions are
// not compared, counted (compare_skipped): a sample.
const maxComparedSessions = 1024

// round is one request with both responses so far.
type round struct {
	pair     compare.Pair
	ack      Seq  // the request's ACK in prod's stream: the round's key
	prodSeq  Seq  // where prod's answer starts, once one came
	released bool // sent to the shadow: its replies belong to it now
	started  bool // the shadow's answer to it has begun
	// phantoms counts the rounds dropped just before this one (the
	// shadow lagging, compare_overflow): sent to the shadow all the
	// same, their answers begin before this one's, and are skipped.
	phantoms uint16
	greeting bool // what the server said first: compared only if prod said something
}

// rounds is a session's FIFO of rounds, oldest first.
type rounds struct {
	r    [maxPendingRounds]round
	head int
	n    int
	// early holds prod's latest segments that went to the newest round
	// after its answer had started: those the client's next request
	// acknowledges no further than were that request's answer, which
	// overtook it (the two directions are captured apart).
	early     [earlyAnswers]earlyAnswer
	earlyNext int
	// proto is the session's protocol once known (the map's, or detected
	// from the first request or prod's greeting); starts walks the
	// shadow's stream when it is an ordered one.
	proto  compare.Protocol
	starts compare.Starts
	// carry is the phantoms for the next round to open; skipping is set
	// while the shadow's bytes continue a phantom's answer.
	carry    uint16
	skipping bool
}

// earlyAnswers is how many of prod's segments a session keeps in case
// they answer a request not yet seen: as many as rounds pending, since a
// block of the client's capture can come after a block of prod's holding
// the answers to all its requests.
const earlyAnswers = maxPendingRounds

func (rs *rounds) keepEarly(seq Seq, at int64, payload []byte, prefix int) {
	e := &rs.early[rs.earlyNext]
	rs.earlyNext = (rs.earlyNext + 1) % earlyAnswers
	e.ok, e.seq, e.at = true, seq, at
	e.n = uint16(copy(e.head[:prefix], payload))
}

type earlyAnswer struct {
	ok   bool
	seq  Seq
	at   int64
	n    uint16
	head [compare.MaxPrefix]byte
}

var roundsPool = sync.Pool{New: func() any { return new(rounds) }}

func (rs *rounds) at(i int) *round { return &rs.r[(rs.head+i)%maxPendingRounds] }

func (rs *rounds) newest() *round {
	if rs.n == 0 {
		return nil
	}
	return rs.at(rs.n - 1)
}

// newestReleased returns the newest round sent to the shadow.
func (rs *rounds) newestReleased() *round {
	for i := rs.n - 1; i >= 0; i-- {
		if r := rs.at(i); r.released {
			return r
		}
	}
	return nil
}

// oldestUnstarted returns the oldest round without an answer from the
// shadow yet that was sent to it, or that phantoms precede.
func (rs *rounds) oldestUnstarted() *round {
	for i := 0; i < rs.n; i++ {
		if r := rs.at(i); !r.started && !shadowEnded(r) {
			if r.released || r.phantoms > 0 {
				return r
			}
			return nil
		}
	}
	return nil
}

// latestStarted returns the newest round the shadow's answer began on.
func (rs *rounds) latestStarted() *round {
	for i := rs.n - 1; i >= 0; i-- {
		if r := rs.at(i); r.started {
			return r
		}
	}
	return nil
}

func shadowEnded(r *round) bool {
	return r.pair.Shadow.Outcome == compare.Reset || r.pair.Shadow.Outcome == compare.Closed
}

// dropOldestUnreleased removes the oldest round not sent to the shadow,
// or the oldest of all if every one was.
// Either way the round still reaches the shadow, or did: it becomes a
// phantom of the round after it, whose answer its answer precedes.
func (rs *rounds) dropOldestUnreleased() {
	i := 0
	for i < rs.n && rs.at(i).released {
		i++
	}
	if i == rs.n {
		i = 0
	}
	if r := rs.at(i); !r.started {
		ph := r.phantoms + 1
		if i+1 < rs.n {
			rs.at(i + 1).phantoms += ph
		} else {
			rs.carry += ph
		}
	}
	if i == 0 {
		rs.pop()
		return
	}
	for ; i < rs.n-1; i++ {
		*rs.at(i) = *rs.at(i + 1)
	}
	*rs.at(rs.n - 1) = round{}
	rs.n--
}

func (rs *rounds) pop() {
	*rs.at(0) = round{}
	rs.head = (rs.head + 1) % maxPendingRounds
	rs.n--
}

// comparing reports whether s's rounds are kept, starting to keep them
// if there is room.
func (w *Worker) comparing(s *session) bool {
	if w.rec == nil {
		return false
	}
	if s.rounds != nil {
		return true
	}
	if s.compareSkipped {
		return false
	}
	if w.compared >= maxComparedSessions {
		s.compareSkipped = true
		w.ctr.inc(CtrCompareSkipped)
		return false
	}
	s.rounds = roundsPool.Get().(*rounds)
	w.compared++
	return true
}

// pairRequest takes new client data of s with ACK ack, captured at capAt:
// more of the newest round, or a new round.
func (w *Worker) pairRequest(s *session, ack Seq, payload []byte, capAt int64) {
	if len(payload) == 0 || !w.comparing(s) {
		return
	}
	rs := s.rounds
	if r := rs.newest(); r != nil && r.ack == ack {
		r.pair.AppendRequest(payload) // up to RequestHeadLen: its start is what is summarized
		r.pair.Prod.Sent = capAt      // the request's last byte, so far
		return
	}
	if rs.n == maxPendingRounds {
		// The shadow lags too far: the oldest round not yet sent goes
		// unpaired (the one sent is being answered).
		w.ctr.inc(CtrCompareOverflow)
		rs.dropOldestUnreleased()
	}
	prev := rs.newest()
	r := rs.at(rs.n)
	rs.n++
	*r = round{ack: ack, phantoms: rs.carry}
	rs.carry = 0
	r.pair.Map = uint16(s.key.mapIdx)
	r.pair.Client = s.key.client.SrcAddrPort()
	r.pair.AppendRequest(payload)
	r.pair.Prod.Sent = capAt
	if prev != nil && prev != r && prev.pair.Prod.Outcome == compare.Answered && !prev.prodSeq.Before(ack) {
		// All prod said since prev's request answers this one, which
		// its answer overtook.
		r.pair.Prod, r.prodSeq = prev.pair.Prod, prev.prodSeq
		r.pair.Prod.Sent = capAt
		prev.pair.Prod = compare.Response{Sent: prev.pair.Prod.Sent}
		if prev.greeting && rs.n == 2 {
			rs.pop() // no greeting: the shadow's first answer is r's (r stays where it is)
		}
	} else {
		w.takeEarly(rs, prev, r, ack, capAt)
	}
	for i := range rs.early {
		if e := &rs.early[i]; e.ok && e.seq.Before(ack) {
			e.ok = false // an older round's
		}
	}
}

// takeEarly gives r, the round just opened with ACK ack, prod's segments
// at or past ack that went to prev, in the order they came: its answer,
// which overtook it. prev's head loses them.
func (w *Worker) takeEarly(rs *rounds, prev, r *round, ack Seq, capAt int64) {
	for k := 0; k < earlyAnswers; k++ {
		e := &rs.early[(rs.earlyNext+k)%earlyAnswers] // oldest first
		if !e.ok || e.seq.Before(ack) || e.at < capAt-int64(time.Second) {
			continue
		}
		if r.pair.Prod.Outcome != compare.Answered {
			r.prodSeq = e.seq
			if prev != nil {
				if cut := e.seq.Sub(prev.prodSeq); cut >= 0 && cut < int(prev.pair.Prod.HeadLen) {
					prev.pair.Prod.HeadLen = uint16(cut)
				}
			}
		}
		r.pair.Prod.Append(e.head[:e.n], w.cfg.ComparePrefix, e.at)
	}
}

// pairGreeting opens a round for what a server says first (a greeting),
// before any request: both sides' first bytes belong to it.
func (w *Worker) pairGreeting(s *session, seq Seq, payload []byte, capAt int64) {
	if !w.comparing(s) || s.rounds.n > 0 || s.clientNxt != s.isn+1 {
		return
	}
	rs := s.rounds
	r := rs.at(0)
	rs.n = 1
	*r = round{ack: s.prodBase, released: true, greeting: true, prodSeq: seq}
	r.pair.Map = uint16(s.key.mapIdx)
	r.pair.Client = s.key.client.SrcAddrPort()
	r.pair.Prod.Sent = s.synCapAt
	r.pair.Shadow.Sent = s.startAt
	r.pair.Prod.Append(payload, w.cfg.ComparePrefix, capAt)
}

// answering returns the round prod's bytes at seq answer: the newest
// whose request the client sent having no more than seq of prod's stream.
// By sequence, not by arrival: prod's packets are captured apart from the
// client's, and the client's next request can reach the worker before
// the answer that prompted it.
func (rs *rounds) answering(seq Seq) *round {
	for i := rs.n - 1; i >= 0; i-- {
		if r := rs.at(i); !r.ack.After(seq) {
			return r
		}
	}
	return nil
}

// pairProd takes prod's response bytes at seq, captured at capAt, handled
// at now.
func (w *Worker) pairProd(s *session, seq Seq, payload []byte, capAt, now int64) {
	if s.rounds == nil || s.rounds.n == 0 {
		w.pairGreeting(s, seq, payload, capAt)
		return
	}
	rs := s.rounds
	r := rs.answering(seq)
	if r == nil {
		return
	}
	switch {
	case r.pair.Prod.Outcome != compare.Answered:
		r.prodSeq = seq
	case r == rs.newest() && seq.After(r.prodSeq):
		rs.keepEarly(seq, capAt, payload, w.cfg.ComparePrefix)
	}
	r.pair.Prod.Append(payload, w.cfg.ComparePrefix, capAt)
	if s.state.ended() {
		w.pairEnded(s) // the answer an ended session's rounds waited for
		return
	}
	w.pairFlush(rs, now)
}

// pairProdEnded marks how prod ended the connection at seq, for the round
// it ended if prod had not answered it.
func (w *Worker) pairProdEnded(s *session, seq Seq, o compare.Outcome, now int64) {
	if s.h2 != nil {
		w.h2Ended(s, false, o, now)
		return
	}
	if s.rounds == nil {
		return
	}
	if r := s.rounds.answering(seq); r != nil && r.pair.Prod.Outcome != compare.Answered {
		r.pair.Prod.Outcome = o
	}
}

// pairSent notes that a segment of the round with ACK ack went to the
// shadow at now. The first segment of a round releases it; the rounds
// before it are then settled on both sides and handed over.
func (w *Worker) pairSent(s *session, ack Seq, now int64) {
	rs := s.rounds
	if rs == nil {
		return
	}
	for i := 0; i < rs.n; i++ {
		r := rs.at(i)
		if r.ack != ack {
			continue
		}
		r.pair.Shadow.Sent = now
		if !r.released {
			r.released = true
			w.pairFlush(rs, now)
		}
		return
	}
}

// prodAnswerGrace bounds how long a round the shadow is done with waits
// for prod's answer, captured apart: past it, prod's answer was lost to
// the capture, and the round goes as it is.
const prodAnswerGrace = time.Second

// pairFlush hands over the oldest rounds while they are over on both
// sides: a later round went to the shadow (so the shadow is done with
// them), and prod's answer came, or prodAnswerGrace passed since.
// Rounds that never reached the shadow are dropped.
func (w *Worker) pairFlush(rs *rounds, now int64) {
	for rs.n > 0 {
		old := rs.at(0)
		var next *round
		if rs.n > 1 {
			next = rs.at(1)
		}
		ended := shadowEnded(old)
		switch {
		case next != nil && !next.released:
			return
		case !old.released:
			if next == nil {
				return
			}
			next.phantoms += old.phantoms
			rs.pop() // never sent to the shadow: nothing to compare
			continue
		case next == nil && !ended:
			return // the shadow may still answer it
		case compare.Ordered(rs.proto) && next != nil && !next.started && !ended && !shadowEnded(next):
			return // the shadow's answer to it may go on, or not have begun
		case old.pair.Prod.Outcome == compare.NoAnswer:
			since := old.pair.Shadow.Sent
			if next != nil {
				since = next.pair.Shadow.Sent
			}
			if now-since < int64(prodAnswerGrace) {
				return
			}
		}
		w.putRound(old)
		rs.pop()
	}
}

// resolveProto settles the session's protocol once it can: the map's, or
// detected from the first round (its request, or prod's greeting).
func (w *Worker) resolveProto(s *session) {
	rs := s.rounds
	if rs.proto != compare.Auto {
		return
	}
	if i := int(s.key.mapIdx); i < len(w.cfg.CompareProtocols) && w.cfg.CompareProtocols[i] != compare.Auto {
		rs.proto = w.cfg.CompareProtocols[i]
		return
	}
	if rs.n == 0 {
		return
	}
	r := rs.at(0)
	if r.greeting {
		if r.pair.Prod.Outcome == compare.Answered {
			rs.proto = compare.DetectResponse(r.pair.Prod.Head[:min(int(r.pair.Prod.HeadLen), compare.MaxPrefix)])
			if rs.proto == compare.Unknown {
				rs.proto = compare.Auto // maybe MySQL's greeting is yet to come, whole
			}
		}
		return
	}
	if r.pair.RequestLen > 0 {
		rs.proto = compare.Detect(r.pair.Request[:min(int(r.pair.RequestLen), compare.RequestHeadLen)])
	}
}

// pairShadow takes a packet of the shadow's response bytes, relayed at
// now: payload is the relayed prefix of its plen bytes.
func (w *Worker) pairShadow(s *session, payload []byte, plen int, now int64) {
	rs := s.rounds
	if rs == nil || len(payload) == 0 {
		return
	}
	w.resolveProto(s)
	if !compare.Ordered(rs.proto) {
		w.pairShadowNewest(rs, payload, now)
		return
	}
	var offs [compare.MaxStarts]uint16
	lost := rs.starts.Lost()
	k := rs.starts.Packet(rs.proto, payload, plen, offs[:])
	if rs.starts.Lost() != lost {
		w.ctr.inc(CtrCompareResync)
	}
	cont := rs.latestStarted()
	if k == 0 && (cont == nil || rs.starts.OutOfSync()) {
		// Out of sync (or bytes before any start): by arrival, as for
		// protocols that are not ordered.
		w.pairShadowNewest(rs, payload, now)
		return
	}
	if cont != nil && !rs.skipping && (k == 0 || offs[0] > 0) {
		end := len(payload)
		if k > 0 {
			end = int(offs[0])
		}
		cont.pair.Shadow.Append(payload[:end], w.cfg.ComparePrefix, now)
	}
	for i := range k {
		r := rs.oldestUnstarted()
		if r == nil {
			w.ctr.inc(CtrCompareUnpaired) // an answer to no request released
			break
		}
		if rs.skipping = r.phantoms > 0; rs.skipping {
			r.phantoms-- // a dropped round's answer
			continue
		}
		end := len(payload)
		if i+1 < k {
			end = int(offs[i+1])
		}
		r.started = true
		r.pair.Shadow.Append(payload[offs[i]:end], w.cfg.ComparePrefix, now)
	}
	w.pairFlush(rs, now)
}

// pairShadowNewest gives the shadow's bytes to the newest round released
// to it; the rounds before it, released, take no more of its answers.
func (w *Worker) pairShadowNewest(rs *rounds, payload []byte, now int64) {
	r := rs.newestReleased()
	if r == nil {
		return
	}
	r.pair.Shadow.Append(payload, w.cfg.ComparePrefix, now)
	rs.skipping = false
	for i := 0; i < rs.n; i++ {
		if o := rs.at(i); o.released {
			o.started, o.phantoms = true, 0
		}
	}
}

// pairShadowOutcome records how the shadow ended the connection, for
// the rounds and the HTTP/2 streams it had not answered.
func (w *Worker) pairShadowOutcome(s *session, o compare.Outcome, now int64) {
	w.pairShadowEnded(s, o, now)
	w.h2Ended(s, true, o, now)
}

// pairShadowEnded marks how the shadow ended the connection, for the
// rounds it had not answered: those before are over on its side.
func (w *Worker) pairShadowEnded(s *session, o compare.Outcome, now int64) {
	if s.rounds == nil {
		return
	}
	for i := 0; i < s.rounds.n; i++ {
		if r := s.rounds.at(i); r.released && !r.started && r.pair.Shadow.Outcome != compare.Answered {
			r.pair.Shadow.Outcome = o
		}
	}
	w.pairFlush(s.rounds, now)
}

// pairEnded hands over the session's rounds when it ends, if prod has
// answered them all; otherwise they wait for prod's answers, captured
// apart and maybe later than the shadow's, while the session lingers, and
// go when it is removed.
func (w *Worker) pairEnded(s *session) {
	rs := s.rounds
	if rs == nil {
		return
	}
	for i := 0; i < rs.n; i++ {
		if r := rs.at(i); r.released && r.pair.Prod.Outcome == compare.NoAnswer {
			return
		}
	}
	w.pairEnd(s)
}

// pairEnd hands over every round that reached the shadow, as it stands,
// and releases the session's rounds.
func (w *Worker) pairEnd(s *session) {
	rs := s.rounds
	if rs == nil {
		return
	}
	for rs.n > 0 {
		if r := rs.at(0); r.released {
			w.putRound(r)
		}
		rs.pop()
	}
	*rs = rounds{}
	roundsPool.Put(rs)
	s.rounds = nil
	w.compared--
}

func (w *Worker) putRound(r *round) {
	if r.greeting && r.pair.Prod.Outcome != compare.Answered {
		return // an answer that overtook its request, moved to it: no greeting
	}
	if w.rec.Put(&r.pair) {
		w.ctr.inc(CtrComparePairs)
	} else {
		w.ctr.inc(CtrCompareDropped)
	}
}
