package doctor

import (
	"fmt"
	"strings"
	"syscall"
	"testing"

	"github.com/tcpshadow/tcpshadow/rewrite"
)

// TestProbeNamesAntiSpoofing: in direct mode, a forged SYN nobody answers
// while plain connections work, with the agent on the shadow (whose
// rules take any reply), never reached the shadow: doctor names
// anti-spoofing on the path and points at the tunnel; with an assist
// host, anti-spoofing leads the possible causes and the tunnel is in the
// fix too.
func TestProbeNamesAntiSpoofing(t *testing.T) {
	r := newProbeRig(t)
	r.cfg.Transport, r.cfg.TunnelPort, r.cfg.AgentOnShadow = TransportDirect, 36525, true
	res := r.run()
	if res.Status != Fail || !strings.Contains(res.Detail, "never reached the shadow: anti-spoofing on the path") ||
		!strings.Contains(res.Fix, "copy --transport udp") || !strings.Contains(res.Fix, "intercept --local --tunnel") {
		t.Fatalf("agent on the shadow: %+v", res)
	}
	if r.tunnels != 0 {
		t.Fatal("the tunnel was checked in direct mode")
	}
	r = newProbeRig(t)
	r.cfg.Transport, r.cfg.TunnelPort = TransportDirect, 36525
	res = r.run()
	if res.Status != Fail || !strings.Contains(res.Detail, "anti-spoofing on the path") || !strings.Contains(res.Fix, "copy --transport udp") {
		t.Fatalf("agent on an assist: %+v", res)
	}
}

// TestProbeNamesBlockedTunnel: in tunnel mode, a probe datagram nobody
// answers names the UDP port blocked, a refused one the agent without
// --tunnel; neither sends a SYN. A tunnel that works carries the probe's
// SYN and the result is the shadow's answer.
func TestProbeNamesBlockedTunnel(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("tunnel: %w", ErrNoTunnelAck), "UDP port 36525 is blocked between this host and the shadow"},
		{fmt.Errorf("tunnel probe: %w", syscall.ECONNREFUSED), "udp 198.18.1.3:36525 refused (port unreachable)"},
	} {
		r := newProbeRig(t)
		r.cfg.Transport, r.cfg.TunnelPort, r.tunnel = TransportUDP, 36525, tc.err
		res := r.run()
		if res.Status != Fail || !strings.Contains(res.Detail, tc.want) || r.tunnels != 1 || len(r.sent) != 0 {
			t.Fatalf("%v: %+v (tunnel checked %d times, %d packets sent)", tc.err, res, r.tunnels, len(r.sent))
		}
	}
	r := newProbeRig(t)
	r.cfg.Transport, r.cfg.TunnelPort = TransportUDP, 36525
	r.answer = func(syn rewrite.Packet) []byte {
		return reply(t, syn.Tuple(), rewrite.FlagSYN|rewrite.FlagACK, syn.TCP().Seq()+1)
	}
	if res := r.run(); res.Status != OK || r.tunnels != 1 {
		t.Fatalf("a working tunnel: %+v", res)
	}
	// The tunnel answers, the SYN gets nothing: the shadow's side.
	r = newProbeRig(t)
	r.cfg.Transport, r.cfg.TunnelPort = TransportUDP, 36525
	if res := r.run(); res.Status != Fail || !strings.Contains(res.Detail, "the agent answered the tunnel's probe") ||
		!strings.Contains(res.Fix, "doctor --role shadow --local") {
		t.Fatalf("tunnel up, no reply: %+v", res)
	}
}
