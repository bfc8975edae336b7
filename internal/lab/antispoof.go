package lab

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Anti-spoofing on the switch (Config.AntiSpoofing), as every major cloud
// does it (AWS's source/destination check, GCP without canIpForward, most
// CNIs): the bridge drops frames from prod's segment port whose IP source
// is not prod's own segment address, in both families (IPv6 link-local
// and unspecified sources stay allowed: neighbour discovery needs them).
// Forged copies never reach the shadow then; prod's own traffic, the
// control channel and the tunnel's datagrams do.

// AntiSpoofTable is the switch's nftables table (bridge family).
const AntiSpoofTable = "tcpshadow_lab_antispoof"

// antiSpoofRules is the table, for nft -f.
func antiSpoofRules() string {
	port := "p-" + RoleProd
	return fmt.Sprintf(`table bridge %s {
	chain forward {
		type filter hook forward priority 0; policy accept;
		iifname "%s" ether type ip ip saddr != %s counter drop comment "v4"
		iifname "%s" ether type ip6 ip6 saddr != { %s, fe80::/10, :: } counter drop comment "v6"
	}
}
`, AntiSpoofTable, port, ProdV4, port, ProdV6)
}

// addAntiSpoofing installs the switch's rules, when the config asks.
func (l *Lab) addAntiSpoofing(ctx context.Context) error {
	if !l.cfg.AntiSpoofing {
		return nil
	}
	cmd := l.Switch.Command(ctx, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(antiSpoofRules())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

var dropCounter = regexp.MustCompile(`counter packets (\d+) bytes \d+ drop comment "(v4|v6)"`)

// SpoofDrops returns how many frames from prod the switch dropped for a
// source that is not prod's, per family.
func (l *Lab) SpoofDrops(ctx context.Context) (v4, v6 int, err error) {
	out, err := l.Switch.Run(ctx, "nft", "list", "table", "bridge", AntiSpoofTable)
	if err != nil {
		return 0, 0, err
	}
	found := 0
	for _, m := range dropCounter.FindAllStringSubmatch(string(out), -1) {
		n, _ := strconv.Atoi(m[1])
		if m[2] == "v4" {
			v4 = n
		} else {
			v6 = n
		}
		found++
	}
	if found != 2 {
		return 0, 0, fmt.Errorf("anti-spoofing counters not found in:\n%s", out)
	}
	return v4, v6, nil
}
