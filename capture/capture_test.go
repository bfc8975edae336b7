package capture

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcap"
	"github.com/google/gopacket/pcapgo"

	"github.com/tcpshadow/tcpshadow/rewrite"
)

// tcpPacket builds an IP packet carrying a TCP segment with payload.
func tcpPacket(t *testing.T, src, dst string, payload string) []byte {
	t.Helper()
	seg := rewrite.Segment{
		Src: netip.MustParseAddrPort(src), Dst: netip.MustParseAddrPort(dst),
		Seq: 1, Ack: 2, Flags: rewrite.FlagACK | rewrite.FlagPSH, Window: 100,
		Payload: []byte(payload),
	}
	b := make([]byte, seg.Len())
	if _, err := seg.Put(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// frame wraps an IP packet in a link header of type lt.
func frame(lt layers.LinkType, ip []byte) []byte {
	et := []byte{0x08, 0x00}
	if ip[0]>>4 == 6 {
		et = []byte{0x86, 0xdd}
	}
	switch lt {
	case layers.LinkTypeEthernet:
		h := make([]byte, 12, 18)
		h = append(h, 0x81, 0x00, 0, 5) // one VLAN tag
		return append(append(h, et...), ip...)
	case layers.LinkTypeLinuxSLL:
		h := make([]byte, 14, 16)
		return append(append(h, et...), ip...)
	case layers.LinkTypeNull:
		return append([]byte{2, 0, 0, 0}, ip...)
	}
	return ip
}

func writePcap(t *testing.T, lt layers.LinkType, frames [][]byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "in.pcap")
	var buf bytes.Buffer
	w := pcapgo.NewWriter(&buf)
	if err := w.WriteFileHeader(65535, lt); err != nil {
		t.Fatal(err)
	}
	ts := time.Unix(1700000000, 0)
	for i, f := range frames {
		ci := gopacket.CaptureInfo{Timestamp: ts.Add(time.Duration(i) * time.Millisecond), CaptureLength: len(f), Length: len(f)}
		if err := w.WritePacket(ci, f); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestFileSourceStripsLinkHeaders(t *testing.T) {
	v4 := tcpPacket(t, "198.18.0.2:40000", "198.18.0.1:80", "GET /")
	v6 := tcpPacket(t, "[2001:2::2]:40000", "[2001:2::1]:80", "GET /6")
	for _, lt := range []layers.LinkType{layers.LinkTypeEthernet, layers.LinkTypeLinuxSLL, layers.LinkTypeRaw, layers.LinkTypeNull} {
		t.Run(lt.String(), func(t *testing.T) {
			arp := append(make([]byte, 12), 0x08, 0x06, 1, 2, 3)
			frames := [][]byte{frame(lt, v4), frame(lt, v6)}
			if lt == layers.LinkTypeEthernet {
				frames = append(frames, arp)
			}
			src, err := OpenFile(writePcap(t, lt, frames), "")
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			var got [][]byte
			var stamps []time.Time
			for {
				pkt, ts, err := src.Read()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, append([]byte(nil), pkt...))
				stamps = append(stamps, ts)
			}
			if len(got) != 2 || !bytes.Equal(got[0], v4) || !bytes.Equal(got[1], v6) {
				t.Fatalf("read %d packets, want the two IP packets unchanged", len(got))
			}
			if stamps[1].Sub(stamps[0]) != time.Millisecond {
				t.Fatalf("timestamps %v", stamps)
			}
			st := src.Stats()
			if st.Read != 2 {
				t.Fatalf("stats read = %d", st.Read)
			}
			if lt == layers.LinkTypeEthernet && st.NonIP != 1 {
				t.Fatalf("ARP frame not counted as non-IP: %+v", st)
			}
		})
	}
}

// TestOtherHostFramesSkipped: on "any" (Linux cooked headers), a frame
// the kernel marks as addressed to another host is not prod's: skipped,
// counted; frames to this host and its own outgoing ones are read.
func TestOtherHostFramesSkipped(t *testing.T) {
	v4 := tcpPacket(t, "198.18.0.2:40000", "198.18.0.1:80", "GET /")
	typed := func(pktType byte) []byte {
		f := frame(layers.LinkTypeLinuxSLL, v4)
		f[1] = pktType
		return f
	}
	src, err := OpenFile(writePcap(t, layers.LinkTypeLinuxSLL, [][]byte{typed(0), typed(3), typed(4), typed(3)}), "")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	n := 0
	for {
		_, _, err := src.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if st := src.Stats(); n != 2 || st.OtherHost != 2 || st.NonIP != 0 {
		t.Fatalf("read %d, other_host %d, non_ip %d; want 2, 2, 0", n, st.OtherHost, st.NonIP)
	}
}

func TestFilterForSelectsOnlyMappedTrafficAndNeverOwnOutput(t *testing.T) {
	filter := FilterFor(
		[]netip.AddrPort{
			netip.MustParseAddrPort("0.0.0.0:80"),     // any IPv4 address
			netip.MustParseAddrPort("198.18.0.1:443"), // one address
			netip.MustParseAddrPort("[::]:8080"),      // any IPv6 address
		},
		[]netip.AddrPort{netip.MustParseAddrPort("198.18.1.2:80")}, // the shadow, same port
	)
	bpf, err := pcap.NewBPF(linkTypeRawAlt, 65535, filter) // DLT_RAW
	if err != nil {
		t.Fatalf("filter %q does not compile: %v", filter, err)
	}
	cases := []struct {
		src, dst string
		want     bool
	}{
		{"198.18.0.2:40000", "198.18.0.1:80", true},
		{"198.18.0.2:40000", "198.18.0.9:80", true},
		{"198.18.0.2:40000", "198.18.0.1:443", true},
		{"198.18.0.2:40000", "198.18.0.9:443", false},
		{"[2001:2::2]:40000", "[2001:2::1]:8080", true},
		{"[2001:2::2]:40000", "[2001:2::1]:80", false}, // port 80 is mapped for IPv4 only
		{"198.19.3.4:40000", "198.18.1.2:80", false},   // the copier's own output
		{"198.18.0.1:80", "198.18.0.2:40000", false},   // prod's responses
	}
	for _, c := range cases {
		pkt := tcpPacket(t, c.src, c.dst, "x")
		ci := gopacket.CaptureInfo{CaptureLength: len(pkt), Length: len(pkt)}
		if got := bpf.Matches(ci, pkt); got != c.want {
			t.Errorf("%s -> %s: match %v, want %v (filter %q)", c.src, c.dst, got, c.want, filter)
		}
	}
}

func TestFilterFromSelectsOnlyProdsAnswers(t *testing.T) {
	filter := FilterFrom(
		[]netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:80"), netip.MustParseAddrPort("[2001:2::1]:8080")},
		[]netip.AddrPort{netip.MustParseAddrPort("198.18.1.2:80")},
	)
	bpf, err := pcap.NewBPF(linkTypeRawAlt, 65535, filter)
	if err != nil {
		t.Fatalf("filter %q does not compile: %v", filter, err)
	}
	cases := []struct {
		src, dst string
		want     bool
	}{
		{"198.18.0.1:80", "198.18.0.2:40000", true},      // prod answers
		{"[2001:2::1]:8080", "[2001:2::2]:40000", true},  // on IPv6
		{"[2001:2::9]:8080", "[2001:2::2]:40000", false}, // another address
		{"198.18.0.2:40000", "198.18.0.1:80", false},     // the client's packets
		{"198.18.0.2:80", "198.18.1.2:80", false},        // the copier's own output
	}
	for _, c := range cases {
		pkt := tcpPacket(t, c.src, c.dst, "x")
		ci := gopacket.CaptureInfo{CaptureLength: len(pkt), Length: len(pkt)}
		if got := bpf.Matches(ci, pkt); got != c.want {
			t.Errorf("%s -> %s: match %v, want %v (filter %q)", c.src, c.dst, got, c.want, filter)
		}
	}
}

func TestOpenFileErrors(t *testing.T) {
	if _, err := OpenFile(filepath.Join(t.TempDir(), "missing.pcap"), ""); err == nil {
		t.Fatal("missing file opened")
	}
	path := writePcap(t, layers.LinkTypeRaw, nil)
	if _, err := OpenFile(path, "tcp and and"); err == nil {
		t.Fatal("bad filter accepted")
	}
}
