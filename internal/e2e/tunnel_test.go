package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/tcpshadow/tcpshadow/intercept/tunnel"
	"github.com/tcpshadow/tcpshadow/internal/lab"
)

// The tunnel transport under anti-spoofing: the lab's switch drops every
// frame from prod whose source is not prod's own address (as clouds do),
// so forged copies never reach the shadow; copy --transport udp seals
// them in datagrams from prod's address to the agent on the shadow
// (intercept --local --tunnel), which injects them there.

// tunnelPort is the agent's tunnel port in these tests: the default.
var tunnelPort = tunnel.DefaultPort

// prodDoctor runs doctor --role prod --probe on prod for the v4 map and
// returns its output and whether it exited 0.
func (e *localEnv) prodDoctor(extra ...string) (string, bool) {
	e.t.Helper()
	args := append([]string{"doctor", "--role", "prod", "--iface", lab.ProdClientLink,
		"--intercept", lab.ShadowV4.String(), "--secret-file", writeSecretFile(e.t, localSecret, 0),
		"--probe", "--map", fmt.Sprintf("%s:80-%s:80", lab.ProdClientSideV4, lab.ShadowV4),
		"--client-pool", lab.PoolV4.String(), "--probe-timeout", "2s"}, extra...)
	out, err := e.lab.Prod.Run(context.Background(), binPath, args...)
	return string(out), err == nil
}

// TestTunnelDoctorNamesAntiSpoofing: with the switch dropping forged
// sources, the direct mode copies nothing, and doctor --probe names
// anti-spoofing on the path (the agent is on the shadow, so the SYN never
// reached it) and points at the tunnel; the switch counted the drops.
func TestTunnelDoctorNamesAntiSpoofing(t *testing.T) {
	e := newLocalEnvWith(t, localEnvOptions{antiSpoofing: true})
	out, ok := e.prodDoctor()
	t.Logf("doctor, direct mode:\n%s", out)
	if ok || !strings.Contains(out, "never reached the shadow: anti-spoofing on the path") ||
		!strings.Contains(out, "copy --transport udp") {
		t.Fatalf("doctor in direct mode under anti-spoofing (exit 0: %v):\n%s", ok, out)
	}
	v4, _, err := e.lab.SpoofDrops(context.Background())
	if err != nil || v4 < 1 {
		t.Fatalf("the switch dropped %d forged IPv4 frames (%v), want the probe's SYNs", v4, err)
	}
}

// TestTunnelCopy: under anti-spoofing, through the tunnel, keep-alive HTTP
// over IPv4 and IPv6 and one connection per request are copied 100%
// (every request prod served, served by the shadow to a pool address);
// the switch dropped nothing (no forged frame left prod); the agent
// injected every datagram and refused none; doctor --probe --transport
// udp passes, and names the UDP port once a firewall on the shadow drops
// it.
func TestTunnelCopy(t *testing.T) {
	e := newLocalEnvWith(t, localEnvOptions{antiSpoofing: true, tunnel: true})
	e.copyEveryShape(300, 50)

	if v4, v6, err := e.lab.SpoofDrops(context.Background()); err != nil || v4 != 0 || v6 != 0 {
		t.Fatalf("the switch dropped %d IPv4 and %d IPv6 frames from forged sources (%v): a forged packet left prod", v4, v6, err)
	}
	am := e.agentMetrics()
	cm := e.copyMetrics()
	injected, sent := am["tcpshadow_tunnel_injected_total"], cm["tcpshadow_tunnel_sent_total"]
	t.Logf("copier sent %v datagrams, agent received %v, injected %v", sent, am["tcpshadow_tunnel_received_total"], injected)
	if injected == 0 || injected != am["tcpshadow_tunnel_received_total"] || injected != sent {
		e.dumpMetrics()
		t.Fatalf("sent %v, received %v, injected %v: want all equal and nonzero", sent, am["tcpshadow_tunnel_received_total"], injected)
	}
	for _, k := range refusalCounters {
		if am[k] != 0 {
			t.Errorf("%s = %v, want 0", k, am[k])
		}
	}
	for _, k := range []string{"tcpshadow_tunnel_send_failed_total", "tcpshadow_tunnel_too_big_total"} {
		if cm[k] != 0 {
			t.Errorf("copier %s = %v, want 0", k, cm[k])
		}
	}
	if leaks := e.leaked(); len(leaks) != 0 {
		t.Fatalf("%d packets from the shadow to the pools crossed the segment, first: %s", len(leaks), leaks[0])
	}

	out, ok := e.prodDoctor("--transport", "udp")
	t.Logf("doctor, tunnel:\n%s", out)
	if !ok || !strings.Contains(out, "answered with a SYN-ACK") {
		t.Fatalf("doctor --transport udp with the tunnel working (exit 0: %v):\n%s", ok, out)
	}
	if am := e.agentMetrics(); am["tcpshadow_tunnel_probes_total"] < 1 {
		t.Fatalf("the agent answered %v probes", am["tcpshadow_tunnel_probes_total"])
	}
	// A firewall on the shadow drops the tunnel's port.
	block := fmt.Sprintf("table inet e2e_block {\n\tchain in {\n\t\ttype filter hook input priority 0; policy accept;\n\t\tudp dport %d drop\n\t}\n}\n", tunnelPort)
	cmd := e.lab.Shadow.Command(context.Background(), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(block)
	if o, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, o)
	}
	out, ok = e.prodDoctor("--transport", "udp")
	t.Logf("doctor, tunnel port dropped:\n%s", out)
	if ok || !strings.Contains(out, fmt.Sprintf("UDP port %d is blocked between this host and the shadow", tunnelPort)) {
		t.Fatalf("doctor --transport udp with the port dropped (exit 0: %v):\n%s", ok, out)
	}
}

// refusalCounters are the agent's counters of refused datagrams.
var refusalCounters = []string{
	"tcpshadow_tunnel_bad_mac_total", "tcpshadow_tunnel_replayed_total", "tcpshadow_tunnel_malformed_total",
	"tcpshadow_tunnel_too_big_total", "tcpshadow_tunnel_no_session_total", "tcpshadow_tunnel_refused_total",
	"tcpshadow_tunnel_inject_failed_total",
}

func (e *localEnv) copyMetrics() map[string]float64 {
	m, err := scrape(e.lab.Prod, net.JoinHostPort(lab.ProdClientSideV4.String(), metricsPort))
	if err != nil {
		e.t.Fatalf("copy daemon metrics: %v", err)
	}
	return m
}

// TestTunnelRefuses: datagrams captured on the segment and sent again
// (replays), captured ones with a changed counter or a flipped byte (bad
// tags), garbage, an oversized datagram and one of a session nobody has,
// all sent at the agent's tunnel port from prod, are refused and counted
// each under its name; nothing is injected: the agent's injected count
// and the shadow's access log do not move.
func TestTunnelRefuses(t *testing.T) {
	e := newLocalEnvWith(t, localEnvOptions{antiSpoofing: true, tunnel: true})
	pcap := filepath.Join(t.TempDir(), "tunnel.pcap")
	dump, err := e.lab.Switch.Start(context.Background(), "tcpdump", "-i", "p-"+lab.RoleProd, "-nn", "-U", "--immediate-mode",
		"-w", pcap, fmt.Sprintf("udp dst port %d", tunnelPort))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "tcpdump listening", 10*time.Second, func() bool { return strings.Contains(dump.Output(), "listening on") })
	host4 := lab.ProdClientSideV4.String()
	if n := e.curl(true, urls(host4, "/genuine", 20)...); n != 1 {
		t.Fatalf("curl opened %d connections", n)
	}
	e.checkCopied(e.prod4, e.shadow4, "/genuine/", 20)
	time.Sleep(500 * time.Millisecond) // the capture writes the last ones
	dump.Stop(5 * time.Second)
	captured := udpPayloads(t, pcap)
	if len(captured) < 20 {
		out, _ := exec.Command("tcpdump", "-r", pcap, "-nn", "-c", "5").CombinedOutput()
		t.Logf("tcpdump: %s\n%s", dump.Output(), out)
		t.Fatalf("captured %d tunnel datagrams, want the copy's (at least 20)", len(captured))
	}
	before := e.agentMetrics()
	served := len(accessedAny(t, e.shadow4, "/"))

	var hostile [][]byte
	hostile = append(hostile, captured...) // replays
	replays := len(captured)
	badMAC := 0
	for i, d := range captured[:10] {
		d = bytes.Clone(d)
		// A counter ahead of the window's top, so that the tag, not the
		// window, refuses it; the odd ones also a flipped byte.
		d[tunnel.HeaderLen-1] ^= 0x5a
		d[tunnel.HeaderLen-4] ^= 0x7f
		if i%2 == 1 {
			d[len(d)-20] ^= 0x01
		}
		hostile = append(hostile, d)
		badMAC++
	}
	garbage := [][]byte{
		[]byte("GET / HTTP/1.1\r\nHost: shadow\r\n\r\n"),
		make([]byte, 100),
		{tunnel.Version},
		bytes.Repeat([]byte{0xff}, 600),
	}
	hostile = append(hostile, garbage...)
	noSession := bytes.Clone(captured[0])
	noSession[5] ^= 0xff // another session id
	hostile = append(hostile, noSession)
	big := make([]byte, tunnel.MaxDatagram+200)
	big[0], big[1] = tunnel.Version, byte(tunnel.TypePacket)
	hostile = append(hostile, big)

	if err := e.lab.Prod.Do(func() error {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(lab.ShadowV4, uint16(tunnelPort))))
		if err != nil {
			return err
		}
		defer c.Close()
		for _, d := range hostile {
			if _, err := c.Write(d); err != nil {
				return err
			}
			time.Sleep(time.Millisecond) // the receiver's buffer is not what is tested
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{
		"tcpshadow_tunnel_replayed_total":   float64(replays),
		"tcpshadow_tunnel_bad_mac_total":    float64(badMAC),
		"tcpshadow_tunnel_malformed_total":  float64(len(garbage)),
		"tcpshadow_tunnel_no_session_total": 1,
		"tcpshadow_tunnel_too_big_total":    1,
	}
	var after map[string]float64
	waitFor(t, "the agent to count every hostile datagram", 10*time.Second, func() bool {
		after = e.agentMetrics()
		return after["tcpshadow_tunnel_received_total"]-before["tcpshadow_tunnel_received_total"] >= float64(len(hostile))
	})
	for k, v := range want {
		if got := after[k] - before[k]; got != v {
			t.Errorf("%s rose by %v, want %v", k, got, v)
		}
	}
	if got := after["tcpshadow_tunnel_injected_total"] - before["tcpshadow_tunnel_injected_total"]; got != 0 {
		t.Errorf("the agent injected %v packets from hostile datagrams", got)
	}
	if got := after["tcpshadow_tunnel_refused_total"] - before["tcpshadow_tunnel_refused_total"]; got != 0 {
		t.Errorf("refused (verified but not allowed) rose by %v: a hostile datagram verified", got)
	}
	time.Sleep(time.Second) // had anything been injected, nginx would log it by now
	if n := len(accessedAny(t, e.shadow4, "/")); n != served {
		t.Fatalf("the shadow served %d requests after the hostile datagrams, %d before", n, served)
	}
	t.Logf("sent %d hostile datagrams: %d replays, %d bad tags, %d garbage, 1 of no session, 1 too big; counters %v",
		len(hostile), replays, badMAC, len(garbage), want)
	// And the copy still works.
	if n := e.curl(true, urls(host4, "/after", 10)...); n != 1 {
		t.Fatalf("curl opened %d connections", n)
	}
	e.checkCopied(e.prod4, e.shadow4, "/after/", 10)
}

// udpPayloads returns the UDP payloads of the packets in a pcap file.
func udpPayloads(t *testing.T, path string) [][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for {
		data, _, err := r.ReadPacketData()
		if err != nil {
			break
		}
		p := gopacket.NewPacket(data, r.LinkType(), gopacket.Default)
		if u, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP); ok && len(u.Payload) > 0 {
			out = append(out, bytes.Clone(u.Payload))
		}
	}
	return out
}
