package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

// lossTable names the nftables tables addLoss creates in the shadow.
const lossTable = "e2e_loss"

// addLoss makes the shadow lose pct% of the copied traffic it receives
// (from the client pools to port) and pct% of its replies (to the pools
// from port), chosen at random per packet. The kernel has no netem, so
// nftables drops them; the rules live in the shadow namespace only and go
// in t.Cleanup.
//
// Replies are dropped at the egress hook of the shadow's link, not at the
// output hook: an output-hook drop is returned to the sending socket as
// EPERM, and TCP keeps such a segment queued and sends it again later,
// which delays replies but never loses them. At egress TCP has counted the
// segment as sent, as on a lossy wire.
func addLoss(t *testing.T, l *lab.Lab, port uint16, pct int) {
	t.Helper()
	rules := fmt.Sprintf(`table inet %[1]s {
	chain in {
		type filter hook input priority -300; policy accept;
		ip saddr %[2]s tcp dport %[4]d numgen random mod 100 < %[5]d counter drop
		ip6 saddr %[3]s tcp dport %[4]d numgen random mod 100 < %[5]d counter drop
	}
}
table netdev %[1]s {
	chain out {
		type filter hook egress device %[6]s priority -300; policy accept;
		ip daddr %[2]s tcp sport %[4]d numgen random mod 100 < %[5]d counter drop
		ip6 daddr %[3]s tcp sport %[4]d numgen random mod 100 < %[5]d counter drop
	}
}
`, lossTable, lab.PoolV4, lab.PoolV6, port, pct, lab.HostLink)
	cmd := l.Shadow.Command(context.Background(), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: add loss rules: %v: %s", err, out)
	}
	t.Cleanup(func() {
		for _, family := range []string{"inet", "netdev"} {
			if _, err := l.Shadow.Run(context.Background(), "nft", "delete", "table", family, lossTable); err != nil {
				t.Errorf("remove loss rules: %v", err)
			}
		}
	})
}

// lossDrops returns how many packets addLoss's rules dropped toward the
// shadow (in) and from it (out).
func lossDrops(t testing.TB, l *lab.Lab) (in, out int) {
	t.Helper()
	count := func(family string) int {
		b, err := l.Shadow.Run(context.Background(), "nft", "list", "table", family, lossTable)
		if err != nil {
			t.Fatal(err)
		}
		return nftPackets(string(b))
	}
	return count("inet"), count("netdev")
}

// checkLossApplied fails the test if either direction lost nothing: the
// test would then not have exercised what it names.
func checkLossApplied(t testing.TB, l *lab.Lab) {
	t.Helper()
	in, out := lossDrops(t, l)
	t.Logf("loss rules dropped %d packets toward the shadow and %d from it", in, out)
	if in == 0 || out == 0 {
		t.Errorf("loss rules dropped %d in and %d out: loss not exercised", in, out)
	}
}
