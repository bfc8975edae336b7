package tcpstate

// timerHeap is a min-heap of sessions ordered by timerAt, holding each
// session at most once (heapIdx is its position, -1 when absent). A
// session whose deadline moves later keeps its earlier entry: the entry
// fires, the session re-evaluates and schedules its real next deadline.
// That keeps per-packet work to a comparison in the common case.
type timerHeap []*session

func (h timerHeap) less(i, j int) bool { return h[i].timerAt < h[j].timerAt }

func (h timerHeap) swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx = i
	h[j].heapIdx = j
}

func (h timerHeap) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !h.less(i, p) {
			return
		}
		h.swap(i, p)
		i = p
	}
}

func (h timerHeap) down(i int) {
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		m := l
		if r := l + 1; r < len(h) && h.less(r, l) {
			m = r
		}
		if !h.less(m, i) {
			return
		}
		h.swap(i, m)
		i = m
	}
}

// schedule makes s fire no later than at (monotonic ns; 0 means never).
func (h *timerHeap) schedule(s *session, at int64) {
	if at == 0 {
		return
	}
	if s.heapIdx >= 0 {
		if s.timerAt <= at {
			return
		}
		s.timerAt = at
		h.up(s.heapIdx)
		return
	}
	s.timerAt = at
	s.heapIdx = len(*h)
	*h = append(*h, s)
	h.up(s.heapIdx)
}

// remove takes s out of the heap if it is there.
func (h *timerHeap) remove(s *session) {
	i := s.heapIdx
	if i < 0 {
		return
	}
	last := len(*h) - 1
	if i != last {
		h.swap(i, last)
	}
	(*h)[last] = nil
	*h = (*h)[:last]
	if i != last {
		h.down(i)
		h.up(i)
	}
	s.heapIdx, s.timerAt = -1, 0
}

// popDue removes and returns the earliest session due at now, or nil.
func (h *timerHeap) popDue(now int64) *session {
	if len(*h) == 0 || (*h)[0].timerAt > now {
		return nil
	}
	s := (*h)[0]
	h.remove(s)
	return s
}

// next returns the earliest deadline, or 0 if none.
func (h timerHeap) next() int64 {
	if len(h) == 0 {
		return 0
	}
	return h[0].timerAt
}
