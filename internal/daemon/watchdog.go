package daemon

import (
	"errors"
	"log/slog"
	"time"

	"github.com/tcpshadow/tcpshadow/capture"
	"github.com/tcpshadow/tcpshadow/internal/sdnotify"
)

// watchdog pets systemd's service watchdog (WatchdogSec=) from a
// datapath loop, at half its interval: a daemon whose capture loop hangs
// stops petting, and systemd restarts it. Off (a no-op) when the unit has
// no watchdog. It costs the loop a counter per packet: the clock is read
// every watchdogEvery packets and at every idle wake-up. One goroutine,
// the loop's, uses it.
type watchdog struct {
	every time.Duration // 0: off
	next  time.Time
	n     uint
	log   *slog.Logger
}

// watchdogEvery is how many packets go by between two looks at the clock.
const watchdogEvery = 64

func newWatchdog(log *slog.Logger) *watchdog {
	d, err := sdnotify.WatchdogInterval()
	if err != nil {
		log.Warn("systemd watchdog", "err", err)
	}
	return &watchdog{every: d / 2, log: log}
}

// packet is the loop's news of a packet.
func (w *watchdog) packet() {
	if w.every == 0 {
		return
	}
	if w.n++; w.n%watchdogEvery == 0 {
		w.check(time.Now())
	}
}

// idle is the loop's news of a wake-up without a packet.
func (w *watchdog) idle() {
	if w.every != 0 {
		w.check(time.Now())
	}
}

func (w *watchdog) check(now time.Time) {
	if now.Before(w.next) {
		return
	}
	w.next = now.Add(w.every)
	if err := sdnotify.Watchdog(); err != nil {
		w.log.Warn("sd_notify", "err", err)
	}
}

// watchdogSource is a capture source whose reads pet the watchdog: for the
// agent, whose capture loop is intercept's.
type watchdogSource struct {
	capture.Source
	wd *watchdog
}

func (s *watchdogSource) Read() ([]byte, time.Time, error) {
	pkt, ts, err := s.Source.Read()
	switch {
	case err == nil:
		s.wd.packet()
	case errors.Is(err, capture.ErrTimeout):
		s.wd.idle()
	}
	return pkt, ts, err
}
