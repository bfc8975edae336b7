package doctor

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// procTCP renders a /proc/net/tcp address as the kernel prints it: each
// 32-bit word in host byte order.
func procTCP(ap netip.AddrPort) string {
	raw := ap.Addr().AsSlice()
	for i := 0; i < len(raw); i += 4 {
		binary.NativeEndian.PutUint32(raw[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	return fmt.Sprintf("%X:%04X", raw, ap.Port())
}

func TestParseProcNetTCP(t *testing.T) {
	row := func(sl int, local string, st string, inode int) string {
		return fmt.Sprintf("   %d: %s 00000000:0000 %s 00000000:00000000 00:00000000 00000000     0        0 %d 1 0000000019a1e8df 100 0 0 10 0",
			sl, local, st, inode)
	}
	v4 := netip.MustParseAddrPort("198.18.1.3:36524")
	v6 := netip.MustParseAddrPort("[2001:2:0:1::3]:36524")
	text4 := strings.Join([]string{
		"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode",
		row(0, procTCP(v4), "0A", 1149),
		row(1, procTCP(netip.MustParseAddrPort("198.18.1.3:80")), "0A", 1150),    // another port
		row(2, procTCP(netip.MustParseAddrPort("198.18.1.3:36524")), "01", 1151), // established, not listening
		row(3, procTCP(netip.MustParseAddrPort("0.0.0.0:36524")), "0A", 1152),    // any address
		"",
	}, "\n")
	got, err := parseProcNetTCP(strings.NewReader(text4), 36524)
	if err != nil {
		t.Fatal(err)
	}
	want := []procSock{{v4, 1149}, {netip.MustParseAddrPort("0.0.0.0:36524"), 1152}}
	if !slices.Equal(got, want) {
		t.Fatalf("tcp: got %v, want %v", got, want)
	}
	text6 := "  sl  local_address                         remote_address                        st ...\n" +
		row(0, procTCP(v6), "0A", 2001) + "\n" +
		row(1, procTCP(netip.MustParseAddrPort("[::ffff:198.18.1.3]:36524")), "0A", 2002) + "\n"
	got, err = parseProcNetTCP(strings.NewReader(text6), 36524)
	if err != nil {
		t.Fatal(err)
	}
	want = []procSock{{v6, 2001}, {v4, 2002}} // v4-mapped shown as IPv4
	if !slices.Equal(got, want) {
		t.Fatalf("tcp6: got %v, want %v", got, want)
	}
	if _, err := parseProcNetTCP(strings.NewReader("header\n 0: ZZ:8EAC 0:0 0A a b c d e 1\n"), 36524); err == nil {
		t.Fatal("bad address accepted")
	}
}

func TestParseNftChains(t *testing.T) {
	// nft 1.0.6 output; iptables-nft's INPUT chain looks the same.
	out := `{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
	 {"chain": {"family": "inet", "table": "filter", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}},
	 {"chain": {"family": "ip", "table": "filter", "name": "INPUT", "handle": 2, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}},
	 {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 3, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
	 {"chain": {"family": "ip", "table": "t2", "name": "plain", "handle": 1}}]}`
	got, err := parseNftChains([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"inet filter input"}; !slices.Equal(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	if got, err := parseNftChains([]byte(`{"nftables": [{"metainfo": {}}]}`)); err != nil || len(got) != 0 {
		t.Fatalf("empty ruleset: %q, %v", got, err)
	}
	if _, err := parseNftChains([]byte("Error: no nftables")); err == nil {
		t.Fatal("garbage accepted")
	}
}

func TestSysctlNameAndProbeAddr(t *testing.T) {
	for path, want := range map[string]string{
		"net/ipv4/ip_forward":             "net.ipv4.ip_forward",
		"net/ipv4/conf/eth0/rp_filter":    "net.ipv4.conf.eth0.rp_filter",
		"net/ipv4/conf/eth0.10/rp_filter": "net/ipv4/conf/eth0.10/rp_filter", // sysctl(8) takes slashes then
	} {
		if got := sysctlName(path); got != want {
			t.Errorf("sysctlName(%q) = %q, want %q", path, got, want)
		}
	}
	for p, want := range map[string]string{
		"198.19.0.0/16":    "198.19.0.1",
		"198.19.7.9/32":    "198.19.7.9",
		"2001:2:0:ff::/64": "2001:2:0:ff::1",
		"198.19.0.5/16":    "198.19.0.1", // masked first
	} {
		if got := probeAddr(netip.MustParsePrefix(p)); got.String() != want {
			t.Errorf("probeAddr(%s) = %v, want %s", p, got, want)
		}
	}
}
