package pcapdump

import (
	"time"

	"github.com/tcpshadow/tcpshadow/tcpstate"
)

// TeeSender returns a sender that dumps every packet s accepts to d. Only
// a daemon with a dump wraps its senders, so the datapath without one pays
// nothing. The dump is shared by all workers and serialises them: fine
// for a debugging aid. A batching sender stays one (tcpstate.Flusher), so
// the worker still flushes it; its packets are dumped when queued.
func TeeSender(s tcpstate.Sender, d *Dump) tcpstate.Sender {
	ts := teeSender{Sender: s, d: d}
	if f, ok := s.(tcpstate.Flusher); ok {
		return teeFlushSender{teeSender: ts, Flusher: f}
	}
	return ts
}

type teeSender struct {
	tcpstate.Sender
	d *Dump
}

func (s teeSender) Send(pkt []byte) error {
	err := s.Sender.Send(pkt)
	if err == nil {
		s.d.WriteIP(time.Now(), pkt)
	}
	return err
}

type teeFlushSender struct {
	teeSender
	tcpstate.Flusher
}
