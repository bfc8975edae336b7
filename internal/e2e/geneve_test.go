package e2e

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tcpshadow/tcpshadow/capture"
	"github.com/tcpshadow/tcpshadow/internal/lab"
	"github.com/tcpshadow/tcpshadow/rewrite"
)

// This kernel has no GENEVE device, so the GENEVE tests bring their own
// mirror: geneveMirror reads prod's client link (both directions, libpcap
// in prod) and sends each frame to the assist's GENEVE port, wrapped as
// its mode says, the way GCP Packet Mirroring or AWS GWLB would.

// The modes of geneveMirror.
const (
	geneveEthernet = iota // protocol 0x6558, an Ethernet frame, no options
	geneveOptions         // the same with two 8-byte options
	geneveGWLB            // GWLB: IPv4 payload with its option, AWS mirroring's VXLAN inside
)

const (
	geneveVNI   = 77 // the session's VNI: GENEVE's, or the inner VXLAN's with GWLB
	otherVNI    = 78 // a decoy session's
	genevePort  = 6081
	cutMarker   = "/g-cut/" // client segments carrying this are truncated
	reorderSize = 1000      // client data segments at least this long are reordered
)

type geneveMirror struct {
	mode                                  atomic.Int32
	reorder                               atomic.Bool
	sent, truncated, swapped, decoys, bad atomic.Int64
	src                                   capture.Source
	conn                                  net.Conn
	done                                  chan struct{}
	held                                  []byte // a client data segment held back to reorder
}

// startGeneveMirror starts the mirror in prod; it stops with the test.
func startGeneveMirror(t *testing.T, l *lab.Lab) *geneveMirror {
	t.Helper()
	m := &geneveMirror{done: make(chan struct{})}
	if err := l.Prod.Do(func() error {
		var err error
		m.src, err = capture.OpenLive(capture.Config{Interface: lab.ProdClientLink, Filter: "tcp port 80"})
		if err != nil {
			return err
		}
		m.conn, err = net.Dial("udp", net.JoinHostPort(lab.AssistV4.String(), fmt.Sprint(genevePort)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	go m.run()
	t.Cleanup(func() {
		m.src.Close()
		<-m.done
		m.conn.Close()
	})
	return m
}

func (m *geneveMirror) run() {
	defer close(m.done)
	for {
		pkt, _, err := m.src.Read()
		switch {
		case errors.Is(err, capture.ErrTimeout):
			m.flush()
			continue
		case err != nil:
			return
		}
		m.frame(append([]byte(nil), pkt...))
	}
}

// frame mirrors one captured IP packet: truncated if it carries the cut
// marker, held back or swapped with the next one when reordering.
func (m *geneveMirror) frame(ip []byte) {
	var p rewrite.Packet
	if p.DecodeHeader(ip) != nil {
		m.bad.Add(1)
		return
	}
	clientData := p.TCP().DstPort() == 80 && len(p.Payload()) > 0
	if clientData && bytes.Contains(p.Payload(), []byte(cutMarker)) {
		ip = ip[:p.IPHeaderLen()+len(p.TCP())+8] // the IP header still claims it all
		m.truncated.Add(1)
	}
	if m.held != nil {
		held := m.held
		m.held = nil
		var h rewrite.Packet
		if clientData && h.DecodeHeader(held) == nil && h.Tuple() == p.Tuple() {
			m.send(ip) // the later segment first
			m.send(held)
			m.swapped.Add(1)
			return
		}
		m.send(held)
	}
	if m.reorder.Load() && clientData && len(p.Payload()) >= reorderSize {
		m.held = ip
		return
	}
	m.send(ip)
}

func (m *geneveMirror) flush() {
	if m.held != nil {
		m.send(m.held)
		m.held = nil
	}
}

// send wraps ip as the mode says and sends it; with GWLB every tenth
// frame also goes as a decoy of another session's VNI.
func (m *geneveMirror) send(ip []byte) {
	eth := make([]byte, 14, 14+len(ip))
	copy(eth, []byte{2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2})
	binary.BigEndian.PutUint16(eth[12:], 0x0800)
	if ip[0]>>4 == 6 {
		binary.BigEndian.PutUint16(eth[12:], 0x86dd)
	}
	eth = append(eth, ip...)
	opt := []byte{0x01, 0x08, 0x01, 1, 0, 0, 0, 7} // class 0x0108 (AWS), 4 bytes of data
	var d []byte
	switch m.mode.Load() {
	case geneveEthernet:
		d = geneveHeader(geneveVNI, 0x6558, nil)
	case geneveOptions:
		d = geneveHeader(geneveVNI, 0x6558, append(opt, 0x01, 0x08, 0x02, 1, 0, 0, 0, 9))
	case geneveGWLB:
		d = append(geneveHeader(0, 0x0800, opt), udpVXLAN(geneveVNI, eth)...)
		if m.sent.Load()%10 == 0 {
			decoy := append(geneveHeader(0, 0x0800, opt), udpVXLAN(otherVNI, eth)...)
			if _, err := m.conn.Write(decoy); err == nil {
				m.decoys.Add(1)
			}
		}
		eth = nil
	}
	if _, err := m.conn.Write(append(d, eth...)); err == nil {
		m.sent.Add(1)
	}
}

func geneveHeader(vni uint32, proto uint16, opts []byte) []byte {
	h := make([]byte, 8, 8+len(opts))
	h[0] = byte(len(opts) / 4)
	binary.BigEndian.PutUint16(h[2:], proto)
	binary.BigEndian.PutUint32(h[4:], vni<<8)
	return append(h, opts...)
}

// udpVXLAN is AWS Traffic Mirroring's datagram, IPv4 + UDP 4789 + VXLAN
// around frame, as GWLB carries it.
func udpVXLAN(vni uint32, frame []byte) []byte {
	n := 20 + 8 + 8 + len(frame)
	b := make([]byte, 36, n)
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(n))
	b[8], b[9] = 64, 17
	copy(b[12:16], lab.ProdV4.AsSlice())
	copy(b[16:20], lab.AssistV4.AsSlice())
	binary.BigEndian.PutUint16(b[20:], 50000)
	binary.BigEndian.PutUint16(b[22:], 4789)
	binary.BigEndian.PutUint16(b[24:], uint16(n-20))
	b[28] = 0x08
	binary.BigEndian.PutUint32(b[32:], vni<<8)
	return append(b, frame...)
}

// TestMirrorGeneve: the copy daemon on the assist reads a GENEVE session
// (--capture geneve://…?vni=77) fed by a mirror of the test's own: frames
// without options, with options, and AWS GWLB's VXLAN inside GENEVE with
// decoys of another VNI; every request reaches the shadow, IPv4 and IPv6.
// Client segments reordered by the mirror are still copied 100% and
// counted out of order; truncated ones are counted and never copied.
func TestMirrorGeneve(t *testing.T) {
	e := newEnv(t, envOptions{lateCopier: true, lab: lab.Config{DisableOffloads: true}})
	m := startGeneveMirror(t, e.lab)
	e.startMirrorCopier(fmt.Sprintf("geneve://%s:%d?vni=%d", lab.AssistV4, genevePort, geneveVNI))
	v6 := net.JoinHostPort(lab.ProdClientSideV6.String(), "80")

	for _, mode := range []struct {
		name string
		mode int32
	}{{"Ethernet", geneveEthernet}, {"Options", geneveOptions}, {"VXLANInGeneve", geneveGWLB}} {
		t.Run(mode.name, func(t *testing.T) {
			m.mode.Store(mode.mode)
			prefix := "/g-" + mode.name
			keepAlive(t, e.lab, prodV4HTTP, prefix+"4", 4, 25)
			keepAlive(t, e.lab, v6, prefix+"6", 2, 25)
			e.checkCopied(t, prefix+"4", 100)
			e.checkCopied(t, prefix+"6", 50)
		})
	}
	met := e.logMirrorMetrics(t)
	if got, want := met["tcpshadow_mirror_other_vni_total"], float64(m.decoys.Load()); got != want || want == 0 {
		t.Errorf("other_vni %v, want the %v decoys sent", got, want)
	}
	if met["tcpshadow_mirror_nested_total"] == 0 {
		t.Error("no frame counted as VXLAN inside GENEVE")
	}
	if met["tcpshadow_mirror_bad_tunnel_total"] != 0 {
		t.Errorf("%v well-formed datagrams counted malformed", met["tcpshadow_mirror_bad_tunnel_total"])
	}

	t.Run("Reordered", func(t *testing.T) {
		m.mode.Store(geneveOptions)
		m.reorder.Store(true)
		defer m.reorder.Store(false)
		before := met["tcpshadow_mirror_out_of_order_total"]
		body := bytes.Repeat([]byte("0123456789abcdef"), 256) // 4 KiB: three segments
		var wg sync.WaitGroup
		for c := range 4 {
			wg.Go(func() {
				client := e.lab.Client.HTTPClient(1)
				defer client.CloseIdleConnections()
				for i := range 10 {
					path := fmt.Sprintf("/g-ooo/%d/%d", c, i)
					do(t, client, http.MethodPost, "http://"+prodV4HTTP+path, body, path)
				}
			})
		}
		wg.Wait()
		e.checkCopied(t, "/g-ooo/", 40)
		swapped := m.swapped.Load()
		after := e.logMirrorMetrics(t)["tcpshadow_mirror_out_of_order_total"]
		t.Logf("mirror swapped %d segment pairs; out_of_order grew by %v", swapped, after-before)
		if swapped == 0 {
			t.Fatal("the mirror reordered nothing: the test did not exercise reordering")
		}
		if after-before < float64(swapped) {
			t.Errorf("out_of_order grew by %v, want at least the %d swaps", after-before, swapped)
		}
	})

	t.Run("Truncated", func(t *testing.T) {
		m.mode.Store(geneveEthernet)
		before := e.logMirrorMetrics(t)
		const cuts = 5
		for i := range cuts {
			client := e.lab.Client.HTTPClient(1)
			path := fmt.Sprintf("%s%d", cutMarker, i)
			do(t, client, http.MethodGet, "http://"+prodV4HTTP+path, nil, path)
			client.CloseIdleConnections()
		}
		// A whole request after the cut ones, on a connection of its own:
		// once the shadow has it, the cut ones had their chance.
		keepAlive(t, e.lab, prodV4HTTP, "/g-after", 1, 1)
		e.checkCopied(t, "/g-after", 1)
		after := e.logMirrorMetrics(t)
		if got := after["tcpshadow_mirror_truncated_total"] - before["tcpshadow_mirror_truncated_total"]; got != float64(m.truncated.Load()) || got < cuts {
			t.Errorf("truncated grew by %v, the mirror cut %d frames", got, m.truncated.Load())
		}
		if got := after[`tcpshadow_copy_events_total{event="ignored_truncated"}`] - before[`tcpshadow_copy_events_total{event="ignored_truncated"}`]; got < cuts {
			t.Errorf("the engine ignored %v truncated segments, want at least %d", got, cuts)
		}
		if n := len(e.shadow.requests(cutMarker)); n != 0 {
			t.Errorf("the shadow served %d requests whose mirrored segment was truncated", n)
		}
		if n := len(e.prod.requests(cutMarker)); n != cuts {
			t.Errorf("prod served %d of the %d requests", n, cuts)
		}
	})
	if m.bad.Load() != 0 {
		t.Errorf("the test's mirror captured %d undecodable packets", m.bad.Load())
	}
}
