package doctor_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/capture"
	"github.com/tcpshadow/tcpshadow/internal/doctor"
	"github.com/tcpshadow/tcpshadow/internal/doctor/doctortest"
)

// TestProdSendPath: raw sends through a conntrack table in use or output
// rules are warned of, with the datalink path as the fix; the datalink
// path is fine whatever the rules.
func TestProdSendPath(t *testing.T) {
	agentOK := func(context.Context) (string, error) { return "assist-1", nil }
	tests := []struct {
		name   string
		send   string
		break_ func(h *doctortest.Host)
		want   map[string]problem
	}{
		{"Clean", "", func(*doctortest.Host) {}, nil},
		{"ConntrackIdle", doctor.SendRaw, func(h *doctortest.Host) {
			h.Sysctls = map[string]int{"net/netfilter/nf_conntrack_count": 0, "net/netfilter/nf_conntrack_max": 65536}
		}, nil},
		{"Conntrack", doctor.SendRaw, func(h *doctortest.Host) {
			h.Sysctls = map[string]int{"net/netfilter/nf_conntrack_count": 1200, "net/netfilter/nf_conntrack_max": 65536}
		}, map[string]problem{"send_path": {doctor.Warn, []string{"1200 entries of 65536", "fix: run copy with --send datalink"}}}},
		{"OutputRules", doctor.SendRaw, func(h *doctortest.Host) {
			h.OutChains = []string{"inet fw out (output hook, 3 rules, policy accept)"}
		}, map[string]problem{"send_path": {doctor.Warn, []string{"inet fw out", "EPERM", "--send datalink"}}}},
		{"OutputUnreadable", doctor.SendRaw, func(h *doctortest.Host) { h.OutErr = errors.New("nft: boom") },
			map[string]problem{"send_path": {doctor.Warn, []string{"cannot list the output chains: nft: boom"}}}},
		{"NoNft", doctor.SendRaw, func(h *doctortest.Host) { h.OutErr = doctor.ErrNotChecked }, nil},
		{"Datalink", doctor.SendDatalink, func(h *doctortest.Host) {
			h.Sysctls = map[string]int{"net/netfilter/nf_conntrack_count": 1200}
			h.OutChains = []string{"inet fw out (output hook, 3 rules, policy drop)"}
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := &doctortest.Host{Links: []string{"eth0"}}
			tt.break_(h)
			rep := doctor.Prod(context.Background(), h, doctor.ProdConfig{Iface: "eth0", Agent: "198.18.1.3:36524", ProbeAgent: agentOK, Send: tt.send})
			checkReport(t, rep, tt.want)
			found := false
			for _, r := range rep {
				found = found || r.Check == "send_path"
			}
			if !found {
				t.Fatal("no send_path line")
			}
		})
	}
}

// TestMirrorResultNamesTheFailure: a session delivering nothing, nothing
// usable, or truncated frames is named; a healthy one is ok.
func TestMirrorResultNamesTheFailure(t *testing.T) {
	const s = "vxlan://198.18.1.3:4789?vni=7"
	tests := []struct {
		name   string
		st     capture.MirrorStats
		err    error
		status doctor.Status
		words  []string
	}{
		{"Healthy", capture.MirrorStats{Datagrams: 100, Frames: 98, OtherVNI: 2}, nil, doctor.OK, []string{"98 frames", "none truncated"}},
		{"Nothing", capture.MirrorStats{}, nil, doctor.Fail, []string{"no datagram in 5s", "delivers nothing"}},
		{"OtherVNI", capture.MirrorStats{Datagrams: 10, OtherVNI: 10}, nil, doctor.Fail, []string{"no usable frame", "10 of another VNI", "fix: give --capture the session's ?vni=N"}},
		{"Garbage", capture.MirrorStats{Datagrams: 10, BadTunnel: 10}, nil, doctor.Fail, []string{"10 malformed tunnel headers"}},
		{"Truncated", capture.MirrorStats{Datagrams: 10, Frames: 10, Truncated: 4}, nil, doctor.Warn, []string{"4 of 10 frames truncated", "never copied", "fix: raise the mirror target's MTU"}},
		{"PortTaken", capture.MirrorStats{}, errors.New("listen udp 198.18.1.3:4789: bind: address already in use"), doctor.Fail, []string{"cannot listen", "VXLAN or GENEVE device"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := doctor.MirrorResult(s, tt.st, 5*time.Second, tt.err)
			if r.Status != tt.status || r.Check != "mirror "+s {
				t.Fatalf("%v: status %v, want %v", r, r.Status, tt.status)
			}
			for _, w := range tt.words {
				if !strings.Contains(r.String(), w) {
					t.Errorf("%q does not say %q", r.String(), w)
				}
			}
		})
	}
}

// TestListenMirrorCounts listens to a session over loopback: what arrives
// is counted, and the listen ends when its time is up.
func TestListenMirrorCounts(t *testing.T) {
	// Find a free port, then listen on it.
	probe, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := probe.LocalAddr().(*net.UDPAddr).AddrPort()
	probe.Close()
	done := make(chan capture.MirrorStats, 1)
	go func() {
		st, err := doctor.ListenMirror(context.Background(), capture.MirrorConfig{Proto: capture.MirrorVXLAN, Addr: addr, VNI: capture.AnyVNI}, 500*time.Millisecond)
		if err != nil {
			t.Error(err)
		}
		done <- st
	}()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr.Addr(), addr.Port())))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Sent until the listener has them: it may not be bound yet.
	deadline := time.Now().Add(400 * time.Millisecond)
	for time.Now().Before(deadline) {
		_, _ = c.Write([]byte{0xff})
		time.Sleep(20 * time.Millisecond)
	}
	st := <-done
	if st.Datagrams == 0 || st.BadTunnel != st.Datagrams {
		t.Fatalf("stats %+v: want every datagram counted malformed", st)
	}
}
