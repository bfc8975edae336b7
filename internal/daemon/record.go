package daemon

import (
	"errors"
	"log/slog"
	"time"

	"github.com/tcpshadow/tcpshadow/capture"
	"github.com/tcpshadow/tcpshadow/internal/metrics"
	"github.com/tcpshadow/tcpshadow/internal/record"
)

// This file is the copy daemon's recording (--record): what its
// captures read, both directions, written to rotating pcap files for a
// later replay.

// validateRecord checks the recording's bounds, whether or not it is on.
func (c *CopyConfig) validateRecord() error {
	err := c.Record.Validate()
	var fe *record.FieldError
	if errors.As(err, &fe) {
		return &FieldError{Field: "Record." + fe.Field, Value: fe.Value, Err: fe.Err}
	}
	return err
}

// openRecord starts the recorder if cfg names a directory; nil otherwise.
func openRecord(cfg record.Config, log *slog.Logger) (*record.Recorder, error) {
	if cfg.Dir == "" {
		return nil, nil
	}
	r, err := record.Open(cfg, log)
	if err != nil {
		return nil, inField("Record.Dir", err)
	}
	log.Info("recording", "dir", cfg.Dir, "max_bytes", cfg.MaxBytes, "max_age", cfg.MaxAge.String(), "max_files", cfg.MaxFiles)
	return r, nil
}

// recorded returns src with every packet it reads also handed to a tap
// of r (src itself if r is nil): the capture goroutine reading it never
// waits for the disk.
func recorded(src capture.Source, r *record.Recorder) capture.Source {
	if r == nil {
		return src
	}
	return recordedSource{Source: src, tap: r.Tap()}
}

type recordedSource struct {
	capture.Source
	tap *record.Tap
}

func (s recordedSource) Read() ([]byte, time.Time, error) {
	pkt, ts, err := s.Source.Read()
	if err == nil {
		s.tap.Write(ts, pkt)
	}
	return pkt, ts, err
}

// RecordSamples renders the recorder's counters; none without one.
func RecordSamples(r *record.Recorder) []metrics.Sample {
	if r == nil {
		return nil
	}
	st := r.Stats()
	c := func(name, help string, v uint64) metrics.Sample {
		return metrics.Sample{Name: "tcpshadow_record_" + name + "_total", Help: help, Value: float64(v)}
	}
	return []metrics.Sample{
		c("packets", "Captured packets written to the recording.", st.Packets),
		c("bytes", "Bytes of captured packets written to the recording.", st.Bytes),
		c("dropped", "Captured packets not recorded: a full queue or a disk error.", st.Dropped),
		c("files", "Recording files completed.", st.Files),
		c("removed", "Old recording files removed to keep the bound on their number.", st.Removed),
		c("errors", "Failed creates, writes and renames of recording files.", st.Errors),
	}
}
