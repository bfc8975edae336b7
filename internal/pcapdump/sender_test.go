package pcapdump

import (
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/google/gopacket/pcapgo"

	"github.com/tcpshadow/tcpshadow/rewrite"
	"github.com/tcpshadow/tcpshadow/tcpstate"
)

// synTo builds a SYN from 198.19.0.1:port to the shadow.
func synTo(t testing.TB, port uint16) []byte {
	t.Helper()
	return synPacket(t, netip.AddrPortFrom(netip.MustParseAddr("198.19.0.1"), port), netip.MustParseAddrPort("198.18.1.2:80"))
}

// pcapPorts returns the TCP source ports of the packets in a pcap file.
func pcapPorts(t testing.TB, path string) []uint16 {
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
	var ports []uint16
	for {
		data, _, err := r.ReadPacketData()
		if err == io.EOF {
			return ports
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		var p rewrite.Packet
		if err := p.DecodeHeader(data); err != nil {
			t.Fatal(err)
		}
		ports = append(ports, p.TCP().SrcPort())
	}
}

type countingSender struct {
	mu   sync.Mutex
	n    int
	fail bool
}

func (s *countingSender) Send([]byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail {
		return errors.New("no buffer space")
	}
	s.n++
	return nil
}

type flushingSender struct{ flushes int }

func (s *flushingSender) Send([]byte) error { return nil }
func (s *flushingSender) Flush() (int, error) {
	s.flushes++
	return 7, nil
}

// TestTeeSender checks the copy daemon's senders dump what they sent,
// and only that, from several workers at once (run with -race).
func TestTeeSender(t *testing.T) {
	path := filepath.Join(t.TempDir(), "copy.pcap")
	d, err := Open(Config{Path: path}, discard)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := TeeSender(&countingSender{fail: w == 3}, d)
			for i := range 50 {
				if err := s.Send(synTo(t, uint16(1000*w+i))); (err != nil) != (w == 3) {
					t.Errorf("worker %d: send error %v", w, err)
				}
			}
		}()
	}
	wg.Wait()
	d.Close()
	ports := pcapPorts(t, path)
	if len(ports) != 150 {
		t.Errorf("%d packets dumped, want the 150 sent", len(ports))
	}
	for _, p := range ports {
		if p >= 3000 {
			t.Errorf("port %d dumped though its send failed", p)
		}
	}
	if st := d.Stats(); st.Packets != 150 {
		t.Errorf("stats %+v: want 150 packets", st)
	}
	if _, ok := TeeSender(&countingSender{}, d).(tcpstate.Flusher); ok {
		t.Error("a plain sender became a Flusher")
	}
	fs := &flushingSender{}
	wrapped, ok := TeeSender(fs, d).(tcpstate.Flusher)
	if !ok {
		t.Fatal("a batching sender lost its Flush: the worker would never flush it")
	}
	if failed, _ := wrapped.Flush(); failed != 7 || fs.flushes != 1 {
		t.Errorf("Flush through the wrapper: %d failed, %d flushes; want the sender's 7 and 1", failed, fs.flushes)
	}
}
