// Package replay plays the packets of capture files on a schedule: each
// packet at its capture time, relative to the first, divided by the
// speed, the files one after another as one timeline, the whole K times.
// It measures how late each packet was handed over against its schedule
// and renders the progress and the summary of a replay.
//
// It owns the order and timing of the files' packets and their
// accounting. It must not interpret TCP or hold sessions: whoever it
// hands the packets to (the tcpstate engine, through internal/daemon)
// does, with the scheduled time as the capture time, so that every
// interval the engine measures (think time, prod's response time) is the
// file's divided by the speed. It never reads a file it has not checked
// whole first (Scan), so a bad file fails the replay before anything is
// sent.
package replay

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/tcpshadow/tcpshadow/internal/pcapfile"
)

// FileInfo is what Scan learnt of one file.
type FileInfo struct {
	Path    string
	Format  string // pcap or pcapng
	Records uint64
	IP      uint64 // records holding an IP packet
	First   int64  // the first and last record's time, ns since the epoch
	Last    int64
}

// Expand returns the files named: a directory stands for its *.pcap and
// *.pcapng files in name order (copy --record names them so that this is
// their time order).
func Expand(names []string) ([]string, error) {
	var out []string
	for _, n := range names {
		fi, err := os.Stat(n)
		if err != nil {
			return nil, err
		}
		if !fi.IsDir() {
			out = append(out, n)
			continue
		}
		ents, err := os.ReadDir(n)
		if err != nil {
			return nil, err
		}
		var in []string
		for _, e := range ents {
			if name := e.Name(); !e.IsDir() && (strings.HasSuffix(name, ".pcap") || strings.HasSuffix(name, ".pcapng")) {
				in = append(in, filepath.Join(n, name))
			}
		}
		if len(in) == 0 {
			return nil, fmt.Errorf("%s: no .pcap or .pcapng file in the directory", n)
		}
		slices.Sort(in)
		out = append(out, in...)
	}
	return out, nil
}

// Scan reads each file whole, checking its framing, and returns what it
// holds; the first bad file's error names it and the offset (a
// *pcapfile.FormatError).
func Scan(paths []string) ([]FileInfo, error) {
	var out []FileInfo
	for _, p := range paths {
		fi, err := scanFile(p)
		if err != nil {
			return nil, err
		}
		out = append(out, fi)
	}
	return out, nil
}

func scanFile(path string) (FileInfo, error) {
	f, err := pcapfile.Open(path)
	if err != nil {
		return FileInfo{}, err
	}
	defer f.Close()
	fi := FileInfo{Path: path, Format: f.Format()}
	for {
		rec, err := f.Next()
		if errors.Is(err, io.EOF) {
			return fi, nil
		}
		if err != nil {
			return FileInfo{}, err
		}
		if fi.Records == 0 || rec.Time < fi.First {
			fi.First = rec.Time
		}
		fi.Last = max(fi.Last, rec.Time)
		fi.Records++
		if _, kind := pcapfile.IPOffset(rec.Link, rec.Frame); kind == pcapfile.KindIP {
			fi.IP++
		}
	}
}

// Span returns the timeline of files: the earliest record's time and how
// long the files last, end to end.
func Span(files []FileInfo) (first, length int64) {
	last := int64(0)
	seen := false
	for _, f := range files {
		if f.Records == 0 {
			continue
		}
		if !seen || f.First < first {
			first = f.First
		}
		last = max(last, f.Last)
		seen = true
	}
	if !seen {
		return 0, 0
	}
	return first, last - first
}
