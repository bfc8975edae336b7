package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/internal/lab"
)

// prodOutputDrop is prod's own firewall refusing everything it sends to
// the shadow's port 80 at OUTPUT, and counting it.
var prodOutputDrop = fmt.Sprintf(`table inet prodfw {
	chain out {
		type filter hook output priority 0; policy accept;
		ip daddr %s tcp dport 80 counter drop
		ip6 daddr %s tcp dport 80 counter drop
	}
}`, lab.ShadowV4, lab.ShadowV6)

func nftApply(t *testing.T, ns *lab.NS, rules string) {
	t.Helper()
	cmd := ns.Command(context.Background(), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v: %s", ns, err, out)
	}
}

// TestDatalinkSend: with prod's OUTPUT dropping everything to the shadow,
// the raw IP mode copies nothing (each send refused, counted), and
// --send datalink copies every request, IPv4 and IPv6, its packets never
// meeting the rule.
func TestDatalinkSend(t *testing.T) {
	const conns, perConn = 4, 25
	t.Run("Raw", func(t *testing.T) {
		e := newEnv(t, envOptions{})
		nftApply(t, e.lab.Prod, prodOutputDrop)
		keepAlive(t, e.lab, prodV4HTTP, "/raw", conns, perConn)
		if got := len(e.prod.requests("/raw")); got != conns*perConn {
			t.Fatalf("prod served %d requests, want %d", got, conns*perConn)
		}
		// Every SYN the copier sends is refused: once it has tried one
		// per connection, nothing can have reached the shadow.
		e.waitFor("the copier's sends refused", 10*time.Second, func() bool {
			m, err := e.copyMetrics()
			return err == nil && m[`tcpshadow_copy_events_total{event="send_errors"}`] >= conns
		})
		if n := len(e.shadow.requests("/raw")); n != 0 {
			t.Fatalf("the shadow served %d requests through an OUTPUT drop", n)
		}
		if n := e.shadow.conns.Load(); n != 0 {
			t.Fatalf("the shadow accepted %d connections through an OUTPUT drop", n)
		}
	})
	t.Run("Datalink", func(t *testing.T) {
		e := newEnv(t, envOptions{copyArgs: []string{"--send", "datalink"}})
		nftApply(t, e.lab.Prod, prodOutputDrop)
		keepAlive(t, e.lab, prodV4HTTP, "/dl4", conns, perConn)
		keepAlive(t, e.lab, "["+lab.ProdClientSideV6.String()+"]:80", "/dl6", conns, perConn)
		e.checkCopied(t, "/dl4", conns*perConn)
		e.checkCopied(t, "/dl6", conns*perConn)
		m, err := e.copyMetrics()
		if err != nil {
			t.Fatal(err)
		}
		if n := m[`tcpshadow_copy_events_total{event="send_errors"}`]; n != 0 {
			t.Errorf("%v sends refused", n)
		}
		// The rule saw none of the copier's packets.
		out, err := e.lab.Prod.Run(context.Background(), "nft", "list", "table", "inet", "prodfw")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Count(string(out), "counter packets 0 ") != 2 {
			t.Errorf("prod's OUTPUT rule counted packets:\n%s", out)
		}
		e.drained(t, 30*time.Second)
	})
}
