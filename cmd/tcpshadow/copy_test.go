package main

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/tcpstate"
)

// copyOptionsFrom parses args with the copy command's flags and returns
// the options the command would validate.
func copyOptionsFrom(t testing.TB, args ...string) *copyOptions {
	t.Helper()
	o := &copyOptions{}
	parseFlags(t, newCopyCmdWith(&globalOptions{}, o), args)
	return o
}

var (
	anyPort = func(p uint16) netip.AddrPort { return netip.AddrPortFrom(netip.Addr{}, p) }
	ap      = netip.MustParseAddrPort
)

// copyBase is the smallest valid set of copy flags, without --map.
var copyBase = []string{"--iface", "eth0", "--intercept", "198.18.1.3"}

func TestCopyConfigMaps(t *testing.T) {
	tests := []struct {
		name       string
		args       []string // after copyBase
		want       []tcpstate.Map
		wantFilter []string // fragments of the generated BPF filter
	}{
		{
			name:       "PortAnyLocal",
			args:       []string{"--map", "80-198.18.1.2:80"},
			want:       []tcpstate.Map{{Local: anyPort(80), Target: ap("198.18.1.2:80")}},
			wantFilter: []string{"(dst port 80 and ip)", "not (dst host 198.18.1.2 and dst port 80)"},
		},
		{
			name:       "LocalAddress",
			args:       []string{"--map", "198.18.0.1:80-198.18.1.2:8080"},
			want:       []tcpstate.Map{{Local: ap("198.18.0.1:80"), Target: ap("198.18.1.2:8080")}},
			wantFilter: []string{"(dst port 80 and dst host 198.18.0.1)", "not (dst host 198.18.1.2 and dst port 8080)"},
		},
		{
			name:       "IPv6",
			args:       []string{"--map", "[2001:2::1]:80-[2001:2:0:1::2]:80"},
			want:       []tcpstate.Map{{Local: ap("[2001:2::1]:80"), Target: ap("[2001:2:0:1::2]:80")}},
			wantFilter: []string{"(dst port 80 and dst host 2001:2::1)", "not (dst host 2001:2:0:1::2 and dst port 80)"},
		},
		{
			name:       "IPv6PortAnyLocal",
			args:       []string{"--map", "443-[2001:2:0:1::2]:8443"},
			want:       []tcpstate.Map{{Local: anyPort(443), Target: ap("[2001:2:0:1::2]:8443")}},
			wantFilter: []string{"(dst port 443 and ip6)", "not (dst host 2001:2:0:1::2 and dst port 8443)"},
		},
		{
			name:       "TargetWithoutPortTakesLocalPort",
			args:       []string{"--map", "8080-198.18.1.2"},
			want:       []tcpstate.Map{{Local: anyPort(8080), Target: ap("198.18.1.2:8080")}},
			wantFilter: []string{"not (dst host 198.18.1.2 and dst port 8080)"},
		},
		{
			name: "IPv6TargetWithoutPort",
			args: []string{"--map", "[2001:2::1]:81-[2001:2:0:1::2]", "--map", "82-2001:2:0:1::2"},
			want: []tcpstate.Map{
				{Local: ap("[2001:2::1]:81"), Target: ap("[2001:2:0:1::2]:81")},
				{Local: anyPort(82), Target: ap("[2001:2:0:1::2]:82")},
			},
		},
		{
			name: "V4MappedUnmapped",
			args: []string{"--map", "[::ffff:198.18.0.1]:80-[::ffff:198.18.1.2]:80"},
			want: []tcpstate.Map{{Local: ap("198.18.0.1:80"), Target: ap("198.18.1.2:80")}},
		},
		{
			name: "SeveralMapsRepeated",
			args: []string{"--map", "198.18.0.1:80-198.18.1.2:80", "-x", "[2001:2::1]:80-[2001:2:0:1::2]:80", "--map", " 443-198.18.1.2:8443 "},
			want: []tcpstate.Map{
				{Local: ap("198.18.0.1:80"), Target: ap("198.18.1.2:80")},
				{Local: ap("[2001:2::1]:80"), Target: ap("[2001:2:0:1::2]:80")},
				{Local: anyPort(443), Target: ap("198.18.1.2:8443")},
			},
			wantFilter: []string{
				"not (dst host 198.18.1.2 and dst port 80)",
				"not (dst host 2001:2:0:1::2 and dst port 80)",
				"not (dst host 198.18.1.2 and dst port 8443)",
			},
		},
		{
			name: "SeveralMapsCommaSeparated",
			args: []string{"--map", "80-198.18.1.2:80,198.18.0.1:81-198.18.1.2:8081"},
			want: []tcpstate.Map{
				{Local: anyPort(80), Target: ap("198.18.1.2:80")},
				{Local: ap("198.18.0.1:81"), Target: ap("198.18.1.2:8081")},
			},
			wantFilter: []string{"not (dst host 198.18.1.2 and dst port 80)", "not (dst host 198.18.1.2 and dst port 8081)"},
		},
		{
			name:       "FilterGiven",
			args:       []string{"--map", "80-198.18.1.2:80", "--filter", "tcp dst port 80"},
			want:       []tcpstate.Map{{Local: anyPort(80), Target: ap("198.18.1.2:80")}},
			wantFilter: []string{"tcp dst port 80"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := copyOptionsFrom(t, append(slices.Clone(copyBase), tt.args...)...).config()
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(cfg.Engine.Maps, tt.want) {
				t.Errorf("maps %v, want %v", cfg.Engine.Maps, tt.want)
			}
			filter := cfg.CaptureConfig().Filter
			for _, frag := range tt.wantFilter {
				if !strings.Contains(filter, frag) {
					t.Errorf("filter %q lacks %q", filter, frag)
				}
			}
			if tt.name == "FilterGiven" && filter != "tcp dst port 80" {
				t.Errorf("filter %q, want the one given", filter)
			}
		})
	}
}

func TestCopyConfigDefaults(t *testing.T) {
	cfg, err := copyOptionsFrom(t, "-i", "eth1", "-x", "80-198.18.1.2:80", "-s", "198.18.1.3", "--name", "prod1").config()
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Capture
	if c.Interface != "eth1" || c.SnapLen != 262144 || c.BufferSize != 32<<20 || !c.InboundOnly {
		t.Errorf("capture config %+v", c)
	}
	e := cfg.EngineConfig() // with the budgets derived from --max-memory and --max-cpu
	if e.Pool != nil {
		t.Error("a pool without --client-pool")
	}
	if e.Workers < 1 || e.MSS != 1460 || e.NoPacing || e.HandshakeTimeout != 5*time.Second ||
		e.ResponseTimeout != 5*time.Second || e.DrainTimeout != 10*time.Second || e.TrustInbound || e.IdleTimeout != 120*time.Second || e.Linger != 2*time.Second ||
		e.QuietPeriod != 20*time.Millisecond || e.MaxSessionBytes != 64<<20 ||
		e.MaxBufferBytes != 512<<20 || e.MaxSessions != 1<<30/4/1024 || e.Workers != cfg.MaxCPU {
		t.Errorf("engine config %+v", e)
	}
	if err := e.Validate(); err != nil {
		t.Errorf("engine config does not validate: %v", err)
	}
	if cfg.Client.Addr != "198.18.1.3:36524" || cfg.Client.Name != "prod1" || cfg.Client.Secret != nil {
		t.Errorf("client config %+v", cfg.Client)
	}
	if cfg.MetricsAddr != "" || cfg.StatsInterval != 30*time.Second {
		t.Errorf("metrics %q, stats interval %v", cfg.MetricsAddr, cfg.StatsInterval)
	}
}

func TestCopyConfigFlags(t *testing.T) {
	secret := writeSecret(t, "  0123456789abcdef-secret\n")
	cfg, err := copyOptionsFrom(t, "-i", "eth1", "-x", "80-198.18.1.2:80", "-s", "198.18.1.3",
		"--workers", "3", "--mss", "536", "--no-pacing", "--secret-file", secret,
		"--handshake-timeout", "1s", "--response-timeout", "2s", "--idle-timeout", "3s",
		"--linger", "4s", "--quiet-period", "5ms", "--max-session-bytes", "4096", "--max-sessions", "1",
		"--snaplen", "128", "--capture-buffer-mb", "1", "--metrics", "198.18.0.1:9464", "--stats-interval", "0",
	).config()
	if err != nil {
		t.Fatal(err)
	}
	e := cfg.Engine
	if e.Workers != 3 || e.MSS != 536 || !e.NoPacing || e.HandshakeTimeout != time.Second ||
		e.ResponseTimeout != 2*time.Second || e.IdleTimeout != 3*time.Second || e.Linger != 4*time.Second ||
		e.QuietPeriod != 5*time.Millisecond || e.MaxSessionBytes != 4096 || e.MaxSessions != 1 {
		t.Errorf("engine config %+v", e)
	}
	if cfg.Capture.SnapLen != 128 || cfg.Capture.BufferSize != 1<<20 {
		t.Errorf("capture config %+v", cfg.Capture)
	}
	if string(cfg.Client.Secret) != "0123456789abcdef-secret" {
		t.Errorf("secret %q: want the file's content without surrounding space", cfg.Client.Secret)
	}
	if cfg.MetricsAddr != "198.18.0.1:9464" || cfg.StatsInterval != 0 {
		t.Errorf("metrics %q, stats interval %v", cfg.MetricsAddr, cfg.StatsInterval)
	}
}

func TestCopyConfigIntercept(t *testing.T) {
	for agent, want := range map[string]string{
		"198.18.1.3":           "198.18.1.3:36524",
		"198.18.1.3:4000":      "198.18.1.3:4000",
		"2001:2:0:1::3":        "[2001:2:0:1::3]:36524",
		"[2001:2:0:1::3]":      "[2001:2:0:1::3]:36524",
		"[2001:2:0:1::3]:4000": "[2001:2:0:1::3]:4000",
		"assist.example":       "assist.example:36524",
		"assist.example:4000":  "assist.example:4000",
	} {
		cfg, err := copyOptionsFrom(t, "-i", "eth0", "-x", "80-198.18.1.2:80", "--intercept", agent).config()
		if err != nil {
			t.Errorf("--intercept %s: %v", agent, err)
			continue
		}
		if cfg.Client.Addr != want {
			t.Errorf("--intercept %s: agent address %s, want %s", agent, cfg.Client.Addr, want)
		}
	}
}

func TestCopyConfigPools(t *testing.T) {
	clientV4, clientV6 := netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("2001:2::2")
	poolV4, poolV6 := netip.MustParsePrefix("198.19.0.0/16"), netip.MustParsePrefix("2001:2:0:ff::/64")
	tests := []struct {
		args         []string
		hasV4, hasV6 bool
	}{
		{[]string{"--client-pool", "198.19.0.0/16", "--client-pool", "2001:2:0:ff::/64"}, true, true},
		{[]string{"-c", "198.19.0.0/16,2001:2:0:ff::/64"}, true, true},
		{[]string{"-c", "198.19.7.7/16"}, true, false}, // host bits are masked
		{[]string{"-c", "2001:2:0:ff::/64"}, false, true},
	}
	for _, tt := range tests {
		cfg, err := copyOptionsFrom(t, append(slices.Clone(copyBase), append([]string{"-x", "80-198.18.1.2:80"}, tt.args...)...)...).config()
		if err != nil {
			t.Errorf("%q: %v", tt.args, err)
			continue
		}
		p := cfg.Engine.Pool
		if p == nil {
			t.Errorf("%q: no pool", tt.args)
			continue
		}
		if p.Has(clientV4) != tt.hasV4 || p.Has(clientV6) != tt.hasV6 {
			t.Errorf("%q: pool has v4 %v v6 %v, want %v %v", tt.args, p.Has(clientV4), p.Has(clientV6), tt.hasV4, tt.hasV6)
		}
		if tt.hasV4 && !poolV4.Contains(p.Map(clientV4)) {
			t.Errorf("%q: %v forged as %v, outside %v", tt.args, clientV4, p.Map(clientV4), poolV4)
		}
		if tt.hasV6 && !poolV6.Contains(p.Map(clientV6)) {
			t.Errorf("%q: %v forged as %v, outside %v", tt.args, clientV6, p.Map(clientV6), poolV6)
		}
	}
}

func TestCopyConfigErrorsNameTheFlag(t *testing.T) {
	m := []string{"-x", "80-198.18.1.2:80"}
	with := func(args ...string) []string { return append(append(slices.Clone(copyBase), m...), args...) }
	tests := []struct {
		args []string
		flag string
	}{
		{[]string{"-x", "80-198.18.1.2:80", "-s", "198.18.1.3"}, "--iface"},
		{[]string{"-i", "eth0", "-s", "198.18.1.3"}, "--map"},
		{[]string{"-i", "eth0", "-x", "80-198.18.1.2:80"}, "--intercept"},
		{with("--intercept", "[]"), "--intercept"},
		{with("--intercept", "198.18.1.3:"), "--intercept"},
		{with("--intercept", "198.18.1.3:0"), "--intercept"},
		{with("--intercept", "198.18.1.3:65536"), "--intercept"},
		{with("--intercept", "198.18.1.3:agent"), "--intercept"},
		{with("--intercept", ":36524"), "--intercept"},
		{with("--client-pool", "198.19.0.0"), "--client-pool"},
		{with("--client-pool", "pool"), "--client-pool"},
		{with("--client-pool", "198.19.0.0/33"), "--client-pool"},
		{with("--client-pool", "198.19.0.0/16,198.20.0.0/16"), "--client-pool"},
		{with("--client-pool", "2001:2:0:ff::/64", "-c", "2001:2:0:fe::/64"), "--client-pool"},
		{with("--workers", "-1"), "--workers"},
		{with("--max-cpu", "0"), "--max-cpu"},
		{with("--max-memory", "1MiB"), "--max-memory"},
		{with("--max-memory", "lots"), "--max-memory"},
		{with("--workers", "1025"), "--workers"},
		{with("--mss", "535"), "--mss"},
		{with("--tls-ca", "/nonexistent/ca.pem"), "--tls-ca"},
		{with("--tls-ca", "/proc/self/status"), "--tls-ca"}, // not PEM
		{with("--tls-server-name", "agent.lab"), "--tls-server-name"},
		{with("--mss", "65496"), "--mss"},
		{with("--handshake-timeout", "0s"), "--handshake-timeout"},
		{with("--response-timeout", "-1s"), "--response-timeout"},
		{with("--idle-timeout", "0s"), "--idle-timeout"},
		{with("--linger", "-1ms"), "--linger"},
		{with("--quiet-period", "0s"), "--quiet-period"},
		{with("--stats-interval", "-1s"), "--stats-interval"},
		{with("--max-session-bytes", "4095"), "--max-session-bytes"},
		{with("--max-sessions", "0"), "--max-sessions"},
		{with("--snaplen", "127"), "--snaplen"},
		{with("--snaplen", "262145"), "--snaplen"},
		{with("--capture-buffer-mb", "0"), "--capture-buffer-mb"},
		{with("--capture-buffer-mb", "4097"), "--capture-buffer-mb"},
		{with("--secret-file", "/nonexistent/tcpshadow-secret"), "--secret-file"},
		{with("--secret-file", writeSecret(t, "0123456789abcde\n")), "--secret-file"}, // 15 bytes
		{with("--secret-file", writeSecret(t, "")), "--secret-file"},
		{with("--secret-file", t.TempDir()), "--secret-file"},
		{with("--secret-file", writeSecretMode(t, "0123456789abcdef\n", 0o604)), "chmod 600"},
		{with("--pool-slot", "1"), "--pool-slot"},
		{with("--pool-slot", "2/2", "-c", "198.19.0.0/16"), "--pool-slot"},
		{with("--pool-slot", "-1/2", "-c", "198.19.0.0/16"), "--pool-slot"},
		{with("--pool-slot", "0/3", "-c", "198.19.0.0/31"), "--pool-slot"},
		{with("--pool-slot", "0/2"), "--pool-slot"}, // no pool to split
		{with("--debug-pprof", "--metrics", "198.18.0.1:9464"), "--debug-pprof"},
	}
	for _, bad := range []string{
		"bad",                               // no dash
		"80",                                // no target
		"80-",                               // empty target
		"-198.18.1.2:80",                    // empty local
		"x-198.18.1.2:80",                   // local not a port
		"0-198.18.1.2:80",                   // local port 0
		"65536-198.18.1.2:80",               // local port too big
		"198.18.0.1-198.18.1.2:80",          // local address without port
		"80-target:80",                      // target a name
		"80-198.18.1.2:0",                   // target port 0
		"80-198.18.1.2:x",                   // target port not a number
		"80-198.18.1.2/24",                  // target a prefix
		"198.18.0.1:80-[2001:2::2]:80",      // families differ
		"[2001:2::1]:80-198.18.1.2",         // families differ
		"80-198.18.1.2:80,80-198.18.1.2:80", // the same map twice
	} {
		tests = append(tests, struct {
			args []string
			flag string
		}{[]string{"-i", "eth0", "-s", "198.18.1.3", "--map", bad}, "--map"})
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			cfg, err := copyOptionsFrom(t, tt.args...).config()
			if err == nil {
				t.Fatalf("accepted: %+v", cfg)
			}
			if !strings.Contains(err.Error(), tt.flag) {
				t.Fatalf("error %q does not name %s", err, tt.flag)
			}
		})
	}
}

// TestCopyConfigMapLimit checks the engine's map limit surfaces as a
// --map error.
func TestCopyConfigMapLimit(t *testing.T) {
	args := slices.Clone(copyBase)
	for i := range 256 {
		args = append(args, "--map", fmt.Sprintf("%d-198.18.1.2:80", 1000+i))
	}
	if _, err := copyOptionsFrom(t, args...).config(); err == nil || !strings.Contains(err.Error(), "--map") {
		t.Fatalf("256 maps: error %v, want one naming --map", err)
	}
	if _, err := copyOptionsFrom(t, args[:len(args)-2]...).config(); err != nil {
		t.Fatalf("255 maps: %v", err)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"0": 0, "4096": 4096, "16MiB": 16 << 20, "16M": 16 << 20, "16MB": 16 << 20,
		"2GiB": 2 << 30, "1 GiB": 1 << 30, "3K": 3 << 10, "1TiB": 1 << 40,
	} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "1.5GiB", "GiB", "12XB", "9999999999999T"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) accepted", in)
		}
	}
}

// TestFormatSize checks sizes print as parseSize reads them back, so the
// --max-memory default shows as "1GiB".
func TestFormatSize(t *testing.T) {
	for n, want := range map[int64]string{1 << 30: "1GiB", 3 << 20: "3MiB", 1536: "1536", 1<<20 + 1: "1048577", 2 << 40: "2TiB", 0: "0"} {
		got := formatSize(n)
		if got != want {
			t.Errorf("formatSize(%d) = %q, want %q", n, got, want)
		}
		if back, err := parseSize(got); err != nil || back != n {
			t.Errorf("parseSize(formatSize(%d)) = %d, %v", n, back, err)
		}
	}
}

// TestCopyPoolSlot: --pool-slot I/N forges only the pool's offsets ≡ I
// (mod N); config check says which slot.
func TestCopyPoolSlot(t *testing.T) {
	client := netip.MustParseAddr("198.18.0.2")
	seen := map[netip.Addr]bool{}
	for _, slot := range []string{"0/2", "1/2"} {
		cfg, err := copyOptionsFrom(t, "-i", "eth0", "-x", "80-198.18.1.2:80", "-s", "198.18.1.3",
			"-c", "198.19.0.0/16", "--pool-slot", slot).config()
		if err != nil {
			t.Fatal(err)
		}
		seen[cfg.Engine.Pool.Map(client)] = true
		if got := forgedDerived(cfg, client); !strings.Contains(got, "pool slot "+slot) {
			t.Errorf("config check says %q", got)
		}
		if cc := cfg.ClientConfig(); len(cc.Pools) != 1 || cc.Pools[0].String() != "198.19.0.0/16 slot "+slot {
			t.Errorf("announced pools %v", cc.Pools)
		}
	}
	if len(seen) != 2 {
		t.Fatalf("two slots forge the same address for %v: %v", client, seen)
	}
}
