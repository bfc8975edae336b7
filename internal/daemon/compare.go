package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"

	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/internal/compare"
	"github.com/tcpshadow/tcpshadow/tcpstate"
)

// CompareConfig configures the comparison of prod's and the shadow's
// answers; Engine.ComparePrefix 0 turns it off.
type CompareConfig struct {
	// Protocols name each map's protocol (compare.MapProtocols: "PROTO",
	// "PORT=PROTO" or "MAP=PROTO"); maps not named are detected.
	Protocols []string
	// DivergenceLog is the divergence log's path; empty: none.
	DivergenceLog string
	// DivergenceLogOptional: the path is the default one, so a missing
	// directory leaves the log off, with a warning, instead of failing.
	DivergenceLogOptional bool
}

// DefaultDivergenceLog is where the divergence log goes by default: the
// units' LogsDirectory.
const DefaultDivergenceLog = "/var/log/tcpshadow/divergence.jsonl"

// validate checks the protocols against the maps.
func (c *CompareConfig) validate(maps []tcpstate.Map) error {
	_, err := c.protocols(maps)
	return err
}

func (c *CompareConfig) protocols(maps []tcpstate.Map) ([]compare.MapConfig, error) {
	names, ports := make([]string, len(maps)), make([]uint16, len(maps))
	for i, m := range maps {
		names[i], ports[i] = m.String(), m.Local.Port()
	}
	protos, err := compare.MapProtocols(c.Protocols, names, ports)
	if err != nil {
		return nil, err
	}
	out := make([]compare.MapConfig, len(maps))
	for i := range maps {
		out[i] = compare.MapConfig{Name: names[i], Protocol: protos[i]}
	}
	return out, nil
}

// startCompare builds the comparer for ecfg's maps and workers, hands its
// recorders to ecfg and runs it until ctx is done; nil when comparison is
// off. done closes once it has stopped (its log closed).
func startCompare(ctx context.Context, c CompareConfig, ecfg *tcpstate.Config, log *slog.Logger) (cmp *compare.Comparer, done <-chan struct{}, err error) {
	if ecfg.ComparePrefix == 0 {
		return nil, nil, nil
	}
	maps, err := c.protocols(ecfg.Maps)
	if err != nil {
		return nil, nil, err
	}
	path := c.DivergenceLog
	if path != "" && c.DivergenceLogOptional {
		if _, err := os.Stat(filepath.Dir(path)); errors.Is(err, fs.ErrNotExist) {
			log.Warn("no divergence log: its directory does not exist (give --divergence-log a path, or --no-divergence-log)", "path", path)
			path = ""
		}
	}
	cmp, err = compare.New(compare.Config{
		Maps: maps, Workers: ecfg.Workers, Log: log,
		Divergence: compare.LogConfig{Path: path},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("compare: %w", err)
	}
	ecfg.Recorders = make([]*compare.Recorder, ecfg.Workers)
	ecfg.CompareProtocols = make([]compare.Protocol, len(maps))
	for i, m := range maps {
		ecfg.CompareProtocols[i] = m.Protocol
	}
	for i := range ecfg.Recorders {
		ecfg.Recorders[i] = cmp.Recorder(i)
	}
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		if err := cmp.Run(ctx); err != nil && ctx.Err() == nil {
			log.Warn("comparison stopped", "err", err)
		}
	}()
	return cmp, ch, nil
}

// h2Ports returns the shadow ports of the maps compared as HTTP/2, for
// the agent to walk (Hello.H2Ports), at most wire.MaxH2Ports; none when
// comparison is off.
//
// Only maps whose protocol is named http2: a map left to detection (auto)
// is not walked per stream. The hello precedes any detection, and pairing
// per stream needs prod's whole payloads from the first packet on, which
// copying for every auto map would cost every protocol; such a map's
// HTTP/2 connections are compared by the pacing's rounds, as before.
func (c *CopyConfig) h2Ports() []uint16 {
	if c.Engine.ComparePrefix == 0 {
		return nil
	}
	maps := c.EngineConfig().Maps
	cfgs, err := c.Compare.protocols(maps)
	if err != nil {
		return nil
	}
	var ports []uint16
	for i, m := range cfgs {
		p := maps[i].Target.Port()
		if m.Protocol == compare.HTTP2 && !slices.Contains(ports, p) && len(ports) < wire.MaxH2Ports {
			ports = append(ports, p)
		}
	}
	return ports
}
