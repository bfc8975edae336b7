package tunnel

import (
	"net/netip"
	"sync"
	"sync/atomic"
)

// Peer is one copy daemon's tunnel as the agent holds it: the keys of its
// control-channel connection and the pools it announced, the only sources
// its inner packets may have.
type Peer struct {
	Open  *Opener // owned by the receiving goroutine
	Seal  *Sealer // probe acks
	Pools []netip.Prefix
}

// Table is the agent's tunnel peers by session. Add and Remove come from
// the control channel's goroutines, Lookup from the receiver's; a lookup
// takes a read lock and allocates nothing.
type Table struct {
	mu sync.RWMutex
	m  map[uint64]*Peer
}

// NewTable returns an empty table.
func NewTable() *Table { return &Table{m: make(map[uint64]*Peer)} }

// Add makes p's datagrams accepted.
func (t *Table) Add(p *Peer) {
	t.mu.Lock()
	t.m[p.Open.Session()] = p
	t.mu.Unlock()
}

// Remove makes the datagrams of session refused from now on.
func (t *Table) Remove(session uint64) {
	t.mu.Lock()
	delete(t.m, session)
	t.mu.Unlock()
}

// Lookup returns the peer of session, or nil.
func (t *Table) Lookup(session uint64) *Peer {
	t.mu.RLock()
	p := t.m[session]
	t.mu.RUnlock()
	return p
}

// Len returns how many sessions are accepted.
func (t *Table) Len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.m)
}

// Allows reports whether src is in one of p's pools.
func (p *Peer) Allows(src netip.Addr) bool {
	for _, pool := range p.Pools {
		if pool.Contains(src) {
			return true
		}
	}
	return false
}

// Current holds the Sealer of the control channel's current connection,
// for the copy daemon's senders: nil while it is down. The client stores
// it, the senders load it for every datagram.
type Current struct{ p atomic.Pointer[Sealer] }

// Store makes s the sealer; nil: no session.
func (c *Current) Store(s *Sealer) { c.p.Store(s) }

// Load returns the sealer, or nil.
func (c *Current) Load() *Sealer { return c.p.Load() }
