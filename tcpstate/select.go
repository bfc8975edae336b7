package tcpstate

import (
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// Selection: whether a new connection, or one of its copies, opens a
// session under the load-test controls (controls.go). It runs before the
// budgets' admission (admit), once per connection: at its SYN, or at its
// first data when it is joined mid-stream.

// selectOpen decides whether copy key.copy of a connection opens a
// session: a SYN with ISN isn, or (join) data of a flow never seen. A
// connection the share leaves out is counted once, at its first copy; a
// session the rate cap skips is remembered, so that the rest of its
// connection does not join it later.
func (w *Worker) selectOpen(key sessionKey, isn Seq, join bool, now int64) bool {
	l := w.sh.liveOf(w.cfg, w.n)
	if w.skipped.has(key, isn, join, now) {
		w.ctr.inc(CtrIgnoredSkipped)
		return false
	}
	h := sampleHash(key.client.Src, key.client.SrcPort, l.c.SampleSeed)
	if join {
		// Opened at any time since the start: joined only if every
		// share and every multiply in effect since would have copied it
		// (scenario 43).
		if int(key.copy) >= l.minCopies || !chosen(h, l.floor) {
			w.ctr.inc(CtrIgnoredSkipped)
			return false
		}
	} else {
		if int(key.copy) >= l.c.Multiply {
			w.ctr.inc(CtrIgnoredSkipped) // a copy retired by a lower multiply
			return false
		}
		if !chosen(h, l.share(now)) {
			if key.copy == 0 {
				w.ctr.inc(CtrSkippedSample)
			}
			return false
		}
	}
	if l.perWorker > 0 && !w.newTokens.take(now, l.perWorker) {
		w.ctr.inc(CtrSkippedRate)
		if !join {
			w.skipped.add(key, isn, now)
		}
		return false
	}
	return true
}

// skipSlots bounds, per worker, the connections remembered as skipped
// by the rate cap; the oldest are forgotten first. A forgotten one that
// is still open may be joined mid-stream by its next data.
const skipSlots = 4096

// skipSet remembers connections whose SYN the rate cap skipped, until
// their FIN or RST, a SYN of a new connection on the flow, or IdleTimeout
// without a packet that would have opened them.
type skipSet struct {
	m    map[sessionKey]skipEntry
	fifo [skipSlots]sessionKey
	head int
	n    int
	ttl  int64
}

type skipEntry struct {
	isn Seq
	at  int64
}

func (k *skipSet) add(key sessionKey, isn Seq, now int64) {
	if k.m == nil {
		k.m = make(map[sessionKey]skipEntry, 64)
	}
	if _, ok := k.m[key]; !ok {
		if k.n == skipSlots {
			delete(k.m, k.fifo[k.head])
			k.head = (k.head + 1) % skipSlots
			k.n--
		}
		k.fifo[(k.head+k.n)%skipSlots] = key
		k.n++
	}
	k.m[key] = skipEntry{isn: isn, at: now}
}

// has reports whether key's connection was skipped: for a SYN, the same
// one (isn); for data, any still fresh. It keeps a fresh entry fresh.
func (k *skipSet) has(key sessionKey, isn Seq, join bool, now int64) bool {
	if len(k.m) == 0 {
		return false
	}
	e, ok := k.m[key]
	if !ok || now-e.at > k.ttl || !join && e.isn != isn {
		return false
	}
	e.at = now
	k.m[key] = e
	return true
}

// forget drops key: its connection ended. Its FIFO slot stays until it
// comes round.
func (k *skipSet) forget(key sessionKey) {
	if len(k.m) > 0 {
		delete(k.m, key)
	}
}

// targetSalt keeps the hash that spreads sessions over a map's targets
// apart from the one that picks workers.
const targetSalt = 0x7a96e7c0ffee5eed

// targetOf is which of a map's of targets copy k of the connection of
// client addr:port goes to: by flow hash, so every packet of it, either
// way, goes to the same one.
func targetOf(addr [16]byte, port uint16, k int, seed uint64, of uint8) uint8 {
	h := rewrite.HashAddrPort(addr, port, seed^targetSalt^uint64(k)*0x9e3779b97f4a7c15)
	return uint8(h % uint64(of))
}
