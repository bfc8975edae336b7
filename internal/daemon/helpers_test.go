package daemon

import (
	"bytes"
	"io"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/gopacket/pcapgo"

	"github.com/tcpshadow/tcpshadow/rewrite"
)

// segment builds the IP packet of seg.
func segment(t testing.TB, seg rewrite.Segment) []byte {
	t.Helper()
	b := make([]byte, seg.Len())
	if _, err := seg.Put(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// synTo builds a SYN from 198.19.0.1:port to the shadow.
func synTo(t testing.TB, port uint16) []byte {
	t.Helper()
	return segment(t, rewrite.Segment{
		Src: netip.AddrPortFrom(netip.MustParseAddr("198.19.0.1"), port), Dst: netip.MustParseAddrPort("198.18.1.2:80"),
		Seq: 1, Flags: rewrite.FlagSYN, Window: 1000,
	})
}

// pcapPackets returns the packets of a pcap file.
func pcapPackets(t testing.TB, path string) [][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var pkts [][]byte
	for {
		data, _, err := r.ReadPacketData()
		if err == io.EOF {
			return pkts
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		pkts = append(pkts, data)
	}
}

// pcapPorts returns the TCP source ports of the packets in a pcap file.
func pcapPorts(t testing.TB, path string) []uint16 {
	t.Helper()
	var ports []uint16
	for _, data := range pcapPackets(t, path) {
		var p rewrite.Packet
		if err := p.DecodeHeader(data); err != nil {
			t.Fatal(err)
		}
		ports = append(ports, p.TCP().SrcPort())
	}
	return ports
}

// lockedBuffer is a log destination safe for the daemons' goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// waitFor polls cond every few milliseconds until it holds or d passes.
func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v", what, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// logHas reports whether the log holds a line with every one of parts.
func logHas(log *lockedBuffer, parts ...string) bool {
	for _, line := range strings.Split(log.String(), "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return true
		}
	}
	return false
}
