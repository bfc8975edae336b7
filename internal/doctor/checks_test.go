package doctor_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/tcpshadow/tcpshadow/intercept"
	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/internal/doctor"
	"github.com/tcpshadow/tcpshadow/internal/doctor/doctortest"
)

var (
	pool4    = netip.MustParsePrefix("198.19.0.0/16")
	pool6    = netip.MustParsePrefix("2001:2:0:ff::/64")
	segment4 = netip.MustParsePrefix("198.18.1.0/24")
	segment6 = netip.MustParsePrefix("2001:2:0:1::/64")
	back4    = netip.MustParsePrefix("198.18.3.0/24")
	assist4  = netip.MustParseAddr("198.18.1.3")
	assist6  = netip.MustParseAddr("2001:2:0:1::3")
	prod4    = netip.MustParseAddr("198.18.1.1")
)

// problem is what a test expects of one non-ok line.
type problem struct {
	status doctor.Status
	words  []string // in Detail or Fix
}

// checkReport asserts the report has exactly the problems named (by
// check), each of the status and saying the words; every other line ok.
func checkReport(t *testing.T, rep doctor.Report, want map[string]problem) {
	t.Helper()
	got := make(map[string]doctor.Result)
	for _, r := range rep {
		if r.Status != doctor.OK {
			got[r.Check] = r
		}
	}
	for check, p := range want {
		r, ok := got[check]
		if !ok {
			t.Errorf("no problem reported for %q", check)
			continue
		}
		if r.Status != p.status {
			t.Errorf("%s: status %v, want %v", check, r.Status, p.status)
		}
		for _, w := range p.words {
			if !strings.Contains(r.String(), w) {
				t.Errorf("%q does not say %q", r.String(), w)
			}
		}
		delete(got, check)
	}
	for _, r := range got {
		t.Errorf("unexpected problem: %v", r)
	}
	if t.Failed() {
		for _, r := range rep {
			t.Logf("  %v", r)
		}
	}
}

func assistHost() *doctortest.Host {
	return &doctortest.Host{
		Sysctls: map[string]int{
			"net/ipv4/ip_forward": 0, "net/ipv4/conf/eth0/forwarding": 0, "net/ipv6/conf/all/forwarding": 0,
		},
		Routes: []doctortest.Route{{Dst: pool6, Route: doctor.Route{Kind: doctor.Blackhole}}},
		Links:  []string{"eth0"},
		Listening: map[uint16][]doctor.Listener{
			36524: {{Addr: netip.MustParseAddrPort("198.18.1.3:36524"), PID: 42, Comm: "tcpshadow"}},
		},
	}
}

func TestAssist(t *testing.T) {
	cfg := doctor.AssistConfig{Iface: "eth0", To: []netip.Prefix{pool4, pool6}, ListenPort: 36524}
	tests := []struct {
		name   string
		break_ func(h *doctortest.Host)
		want   map[string]problem
	}{
		{"Healthy", func(*doctortest.Host) {}, nil},
		{"IPForward", func(h *doctortest.Host) { h.Sysctls["net/ipv4/ip_forward"] = 1 },
			map[string]problem{"ip_forward": {doctor.Fail, []string{"net.ipv4.ip_forward=1", "forwards the shadow's replies", "fix: sysctl -w net.ipv4.ip_forward=0"}}}},
		{"IfaceForwarding", func(h *doctortest.Host) { h.Sysctls["net/ipv4/conf/eth0/forwarding"] = 1 },
			map[string]problem{"ip_forward": {doctor.Fail, []string{"net.ipv4.conf.eth0.forwarding=1"}}}},
		{"IPv6Forwarding", func(h *doctortest.Host) { h.Sysctls["net/ipv6/conf/all/forwarding"] = 1 },
			map[string]problem{"ipv6_forwarding": {doctor.Fail, []string{"fix: sysctl -w net.ipv6.conf.all.forwarding=0"}}}},
		{"IPv6Disabled", func(h *doctortest.Host) { delete(h.Sysctls, "net/ipv6/conf/all/forwarding") }, nil},
		{"NoBlackhole", func(h *doctortest.Host) { h.Routes = nil },
			map[string]problem{"blackhole 2001:2:0:ff::/64": {doctor.Warn, []string{"no route", "ICMPv6 unreachable", "fix: ip -6 route replace blackhole 2001:2:0:ff::/64"}}}},
		{"UnreachableRoute", func(h *doctortest.Host) { h.Routes[0].Route = doctor.Route{Kind: doctor.Unreachable} },
			map[string]problem{"blackhole 2001:2:0:ff::/64": {doctor.Warn, []string{"unreachable route"}}}},
		{"UnicastRouteIsSilent", func(h *doctortest.Host) {
			h.Routes[0].Route = doctor.Route{Kind: doctor.Unicast, Gateway: netip.MustParseAddr("2001:2:0:1::1"), Dev: "eth0"}
		}, nil},
		{"PoolIsLocal", func(h *doctortest.Host) { h.Routes[0].Route = doctor.Route{Kind: doctor.Local, Dev: "lo"} },
			map[string]problem{"blackhole 2001:2:0:ff::/64": {doctor.Fail, []string{"local here"}}}},
		{"NoInterface", func(h *doctortest.Host) { h.Links = nil },
			map[string]problem{"capture eth0": {doctor.Fail, []string{"no interface eth0"}}}},
		{"NoCapturePermission", func(h *doctortest.Host) {
			h.CaptureErr = errors.New("eth0: You don't have permission to perform this capture on that device")
		},
			map[string]problem{"capture eth0": {doctor.Fail, []string{"permission", "CAP_NET_RAW", "fix: setcap cap_net_raw+ep"}}}},
		{"AgentNotRunning", func(h *doctortest.Host) { h.Listening = nil },
			map[string]problem{"agent_listen :36524": {doctor.Warn, []string{"nothing listens", "fix: tcpshadow intercept --iface eth0 --listen :36524"}}}},
		{"PortTaken", func(h *doctortest.Host) {
			h.Listening[36524] = []doctor.Listener{{Addr: netip.MustParseAddrPort("0.0.0.0:36524"), PID: 7, Comm: "nc"}}
		}, map[string]problem{"agent_listen :36524": {doctor.Fail, []string{"nc (pid 7) holds 0.0.0.0:36524"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := assistHost()
			tt.break_(h)
			checkReport(t, doctor.Assist(h, cfg), tt.want)
		})
	}
}

func shadowHost() *doctortest.Host {
	return &doctortest.Host{
		Sysctls: map[string]int{"net/ipv4/conf/all/rp_filter": 0, "net/ipv4/conf/eth0/rp_filter": 0, "net/ipv4/conf/eth1/rp_filter": 0},
		Routes: []doctortest.Route{
			{Dst: segment4, Route: doctor.Route{Kind: doctor.Unicast, Dev: "eth0"}},
			{Dst: segment6, Route: doctor.Route{Kind: doctor.Unicast, Dev: "eth0"}},
			{Dst: back4, Route: doctor.Route{Kind: doctor.Unicast, Dev: "eth1"}},
			{Dst: pool4, Route: doctor.Route{Kind: doctor.Unicast, Gateway: assist4, Dev: "eth0"}},
			{Dst: pool6, Route: doctor.Route{Kind: doctor.Unicast, Gateway: assist6, Dev: "eth0"}},
		},
	}
}

func TestShadow(t *testing.T) {
	cfg := doctor.ShadowConfig{Via: []netip.Addr{assist4, assist6}, To: []netip.Prefix{pool4, pool6}, Prod: prod4}
	viaBack := func(h *doctortest.Host) {
		h.Routes[3].Route = doctor.Route{Kind: doctor.Unicast, Gateway: assist4, Dev: "eth1"}
	}
	const fix = "fix: sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.eth0.rp_filter=2"
	tests := []struct {
		name   string
		break_ func(h *doctortest.Host)
		cfg    func(c *doctor.ShadowConfig)
		want   map[string]problem
	}{
		{"Healthy", func(*doctortest.Host) {}, nil, nil},
		{"RouteMissing", func(h *doctortest.Host) { h.Routes = h.Routes[:3] },
			nil, map[string]problem{
				"route 198.19.0.0/16":    {doctor.Fail, []string{"route missing", "fix: tcpshadow route add --via 198.18.1.3 --to 198.19.0.0/16"}},
				"route 2001:2:0:ff::/64": {doctor.Fail, []string{"route missing", "fix: tcpshadow route add --via 2001:2:0:1::3 --to 2001:2:0:ff::/64"}},
			}},
		{"RouteBlackhole", func(h *doctortest.Host) { h.Routes[3].Route = doctor.Route{Kind: doctor.Blackhole} },
			nil, map[string]problem{"route 198.19.0.0/16": {doctor.Fail, []string{"route missing", "blackhole"}}}},
		{"RouteElsewhere", func(h *doctortest.Host) {
			h.Routes[3].Route = doctor.Route{Kind: doctor.Unicast, Gateway: netip.MustParseAddr("198.18.1.9"), Dev: "eth0"}
		}, nil, map[string]problem{"route 198.19.0.0/16": {doctor.Fail, []string{"route points elsewhere: via 198.18.1.9 dev eth0"}}}},
		{"RouteOnLink", func(h *doctortest.Host) { h.Routes[3].Route = doctor.Route{Kind: doctor.Unicast, Dev: "eth0"} },
			nil, map[string]problem{"route 198.19.0.0/16": {doctor.Fail, []string{"route points elsewhere: dev eth0 (on-link"}}}},
		{"LooseRPFilter", func(h *doctortest.Host) { h.Sysctls["net/ipv4/conf/all/rp_filter"] = 2 }, nil, nil},
		{"StrictSameInterface", func(h *doctortest.Host) { h.Sysctls["net/ipv4/conf/all/rp_filter"] = 1 },
			nil, map[string]problem{"rp_filter 198.19.0.0/16": {doctor.Warn, []string{"strict (all=1, eth0=0)", "works only while", fix}}}},
		{"StrictOnInterfaceOnly", func(h *doctortest.Host) { h.Sysctls["net/ipv4/conf/eth0/rp_filter"] = 1 },
			nil, map[string]problem{"rp_filter 198.19.0.0/16": {doctor.Warn, []string{"strict (all=0, eth0=1)"}}}},
		{"StrictOtherInterface", func(h *doctortest.Host) { h.Sysctls["net/ipv4/conf/all/rp_filter"] = 1; viaBack(h) },
			nil, map[string]problem{"rp_filter 198.19.0.0/16": {doctor.Fail, []string{"arrive on eth0", "leaves by eth1", fix}}}},
		// The kernel applies max(all, iface): all=2 makes eth0=1 loose.
		{"MaxOfAllAndInterface", func(h *doctortest.Host) {
			h.Sysctls["net/ipv4/conf/all/rp_filter"] = 2
			h.Sysctls["net/ipv4/conf/eth0/rp_filter"] = 1
			viaBack(h)
		}, nil, nil},
		{"LooseOtherInterface", func(h *doctortest.Host) { h.Sysctls["net/ipv4/conf/all/rp_filter"] = 2; viaBack(h) }, nil, nil},
		{"StrictWithoutProdAssumes", func(h *doctortest.Host) { h.Sysctls["net/ipv4/conf/all/rp_filter"] = 1 },
			func(c *doctor.ShadowConfig) { c.Prod = netip.Addr{} },
			map[string]problem{"rp_filter 198.19.0.0/16": {doctor.Warn, []string{"assumed", "give --prod"}}}},
		{"RPFilterWithoutRoute", func(h *doctortest.Host) { h.Sysctls["net/ipv4/conf/all/rp_filter"] = 2; h.Routes = h.Routes[:3] },
			func(c *doctor.ShadowConfig) { c.To = c.To[:1] },
			map[string]problem{
				"route 198.19.0.0/16":     {doctor.Fail, []string{"route missing"}},
				"rp_filter 198.19.0.0/16": {doctor.Warn, []string{"while they have no route"}},
			}},
		{"InputPolicyDrop", func(h *doctortest.Host) { h.DropChains = []string{"inet filter input"} },
			nil, map[string]problem{"input_policy": {doctor.Warn, []string{"inet filter input", "fix: nft insert rule inet filter input ip saddr 198.19.0.0/16 accept"}}}},
		{"InputPolicyIPv6Table", func(h *doctortest.Host) { h.DropChains = []string{"ip6 filter INPUT"} },
			nil, map[string]problem{"input_policy": {doctor.Warn, []string{"fix: nft insert rule ip6 filter INPUT ip6 saddr 2001:2:0:ff::/64 accept"}}}},
		{"NoNft", func(h *doctortest.Host) { h.ChainsErr = doctor.ErrNotChecked }, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := shadowHost()
			tt.break_(h)
			c := cfg
			c.To = append([]netip.Prefix(nil), cfg.To...)
			if tt.cfg != nil {
				tt.cfg(&c)
			}
			checkReport(t, doctor.Shadow(h, c), tt.want)
		})
	}
	t.Run("NoNftLeavesTheLineOut", func(t *testing.T) {
		h := shadowHost()
		h.ChainsErr = doctor.ErrNotChecked
		for _, r := range doctor.Shadow(h, cfg) {
			if r.Check == "input_policy" {
				t.Fatalf("input_policy reported without nft: %v", r)
			}
		}
	})
}

func TestProd(t *testing.T) {
	healthy := func() *doctortest.Host { return &doctortest.Host{Links: []string{"eth0"}} }
	agentOK := func(context.Context) (string, error) { return "assist-1", nil }
	tests := []struct {
		name   string
		break_ func(h *doctortest.Host)
		agent  func(context.Context) (string, error)
		want   map[string]problem
	}{
		{"Healthy", func(*doctortest.Host) {}, agentOK, nil},
		{"GRO", func(h *doctortest.Host) { h.GRO = map[string]bool{"eth0": true} }, agentOK,
			map[string]problem{"offload eth0": {doctor.Warn, []string{"GRO on", "splits them to --mss", "fix: ethtool -K eth0 gro off lro off"}}}},
		{"GROAndLRO", func(h *doctortest.Host) { h.GRO, h.LRO = map[string]bool{"eth0": true}, map[string]bool{"eth0": true} }, agentOK,
			map[string]problem{"offload eth0": {doctor.Warn, []string{"GRO and LRO on"}}}},
		{"BigTCP", func(h *doctortest.Host) { h.GROMax = map[string]int{"eth0": 185000} }, agentOK,
			map[string]problem{"gro_max_size eth0": {doctor.Fail, []string{"gro_max_size 185000", "ignored_big_packet", "fix: ip link set dev eth0 gro_max_size 65536"}}}},
		{"NoRawSocket", func(h *doctortest.Host) { h.RawErr = syscall.EPERM }, agentOK,
			map[string]problem{"raw_socket": {doctor.Fail, []string{"CAP_NET_RAW", "fix: setcap cap_net_raw+ep"}}}},
		{"NoInterfaceNoOffloadLine", func(h *doctortest.Host) { h.Links = nil }, agentOK,
			map[string]problem{"capture eth0": {doctor.Fail, []string{"no interface eth0"}}}},
		{"AgentUnreachable", func(*doctortest.Host) {}, func(context.Context) (string, error) {
			return "", fmt.Errorf("%w: %w", intercept.ErrUnreachable,
				&net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)})
		}, map[string]problem{"agent 198.18.1.3:36524": {doctor.Fail, []string{"agent unreachable: dial tcp", "connection refused"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := healthy()
			tt.break_(h)
			rep := doctor.Prod(context.Background(), h, doctor.ProdConfig{Iface: "eth0", Agent: "198.18.1.3:36524", ProbeAgent: tt.agent})
			checkReport(t, rep, tt.want)
		})
	}
}

func TestAgentResultSaysWhy(t *testing.T) {
	refused := func(code wire.ErrorCode, msg string) error {
		return fmt.Errorf("handshake with a: %w", &wire.PeerError{Code: code, Msg: msg})
	}
	tests := []struct {
		err   error
		words []string
	}{
		{refused(wire.CodeAuth, "refused: wrong secret"), []string{"agent refused: auth: wrong secret", "--secret-file"}},
		{refused(wire.CodeAuth, "peer requires authentication and no secret is configured here"), []string{"agent refused: auth: peer requires authentication"}},
		{refused(wire.CodeVersion, "version mismatch"), []string{"agent refused: version", "same tcpshadow version"}},
		{refused(wire.CodeNotAllowed, "address not on the agent's allowlist"), []string{"agent refused: not allowed", "--allow"}},
		{fmt.Errorf("handshake with a: %w", context.DeadlineExceeded), []string{"did not complete the handshake in time"}},
		{fmt.Errorf("handshake with a: %w", wire.ErrBadMagic), []string{"agent handshake failed", "bad hello magic"}},
		{fmt.Errorf("handshake with a: %w: %w", intercept.ErrTLS, errors.New("x509: certificate signed by unknown authority")),
			[]string{"TLS with the agent failed", "unknown authority", "--tls-ca"}},
		{fmt.Errorf("handshake with a: read hello: %w", io.EOF), []string{"closed the connection without a word", "pass --tls-ca"}},
		{fmt.Errorf("handshake with a: %w", syscall.ECONNRESET), []string{"closed the connection without a word"}},
	}
	for _, tt := range tests {
		r := doctor.AgentResult("198.18.1.3:36524", "", tt.err)
		if r.Status != doctor.Fail {
			t.Errorf("%v: status %v", tt.err, r.Status)
		}
		for _, w := range tt.words {
			if !strings.Contains(r.Detail, w) {
				t.Errorf("%v: detail %q does not say %q", tt.err, r.Detail, w)
			}
		}
	}
	if r := doctor.AgentResult("198.18.1.3:36524", "assist-1", nil); r.Status != doctor.OK || !strings.Contains(r.Detail, `"assist-1"`) {
		t.Errorf("success: %v", r)
	}
}

func TestResultFormat(t *testing.T) {
	tests := []struct {
		r    doctor.Result
		want string
	}{
		{doctor.Result{Status: doctor.OK, Check: "ip_forward", Detail: "net.ipv4.ip_forward=0", Fix: "never shown"},
			"ok   ip_forward: net.ipv4.ip_forward=0"},
		{doctor.Result{Status: doctor.Warn, Check: "offload eth0", Detail: "GRO on", Fix: "ethtool -K eth0 gro off lro off"},
			"warn offload eth0: GRO on; fix: ethtool -K eth0 gro off lro off"},
		{doctor.Result{Status: doctor.Fail, Check: "route 198.19.0.0/16", Detail: "route missing", Fix: "tcpshadow route add --via 198.18.1.3 --to 198.19.0.0/16"},
			"FAIL route 198.19.0.0/16: route missing; fix: tcpshadow route add --via 198.18.1.3 --to 198.19.0.0/16"},
		{doctor.Result{Status: doctor.Fail, Check: "agent 198.18.1.3:36524", Detail: "agent unreachable"},
			"FAIL agent 198.18.1.3:36524: agent unreachable"},
	}
	var rep doctor.Report
	for _, tt := range tests {
		if got := tt.r.String(); got != tt.want {
			t.Errorf("got  %q\nwant %q", got, tt.want)
		}
		rep = append(rep, tt.r)
	}
	if got, want := rep.Summary(), "1 ok, 1 warn, 2 FAIL"; got != want {
		t.Errorf("summary %q, want %q", got, want)
	}
}
