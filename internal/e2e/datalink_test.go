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

// trackOutput makes conntrack track prod's own packets (a rule that
// matches on conntrack state, as any stateful firewall has).
const trackOutput = `table inet prodct {
	chain out {
		type filter hook output priority 0; policy accept;
		ct state new counter
	}
}`

// poolConntrack counts prod's conntrack entries for forged IPv4 flows.
func poolConntrack(t *testing.T, ns *lab.NS) int {
	t.Helper()
	out, err := ns.Run(context.Background(), "cat", "/proc/net/nf_conntrack")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(out), "src="+strings.TrimSuffix(lab.PoolV4.Addr().String(), "0.0"))
}

// TestDatalinkSkipsConntrack: with a stateful rule on prod's output, raw
// IP sends put one conntrack entry per forged flow in prod's table; the
// datalink path puts none, and copies as much.
func TestDatalinkSkipsConntrack(t *testing.T) {
	const conns, perConn = 6, 5
	for _, mode := range []struct {
		name string
		args []string
	}{{"Raw", nil}, {"Datalink", []string{"--send", "datalink"}}} {
		t.Run(mode.name, func(t *testing.T) {
			e := newEnv(t, envOptions{copyArgs: mode.args})
			nftApply(t, e.lab.Prod, trackOutput)
			prefix := "/ct" + mode.name
			keepAlive(t, e.lab, prodV4HTTP, prefix, conns, perConn)
			e.checkCopied(t, prefix, conns*perConn)
			n := poolConntrack(t, e.lab.Prod)
			t.Logf("%s: %d conntrack entries for forged flows after %d copied connections", mode.name, n, conns)
			switch {
			case mode.args == nil && n < conns:
				t.Errorf("raw sends left %d forged flows in conntrack, want at least %d: the control case did not track", n, conns)
			case mode.args != nil && n != 0:
				t.Errorf("datalink sends left %d forged flows in prod's conntrack table", n)
			}
		})
	}
}
