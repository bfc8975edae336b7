package intercept

import (
	"bytes"
	"testing"

	"github.com/tcpshadow/tcpshadow/intercept/tunnel"
)

// TestTunnelKeys: a connected copy daemon's tunnel Sealer seals what the
// agent's table opens, with the pools it announced; the keys are gone on
// both sides once it disconnects.
func TestTunnelKeys(t *testing.T) {
	tab := tunnel.NewTable()
	var cur tunnel.Current
	r := newRig(t, AgentConfig{Tunnels: tab}, ClientConfig{Tunnel: &cur})
	r.connected()
	r.waitFor("tunnel keys", func() bool { return cur.Load() != nil && tab.Len() == 1 })
	seal := cur.Load()
	p := tab.Lookup(seal.Session())
	if p == nil {
		t.Fatalf("the agent holds no tunnel for session %x", seal.Session())
	}
	if len(p.Pools) != len(testPools) || p.Pools[0] != testPools[0].Prefix {
		t.Fatalf("tunnel pools %v, announced %v", p.Pools, testPools)
	}
	inner := []byte("an inner packet")
	d := seal.Seal(make([]byte, len(inner)+tunnel.Overhead), tunnel.TypePacket, inner)
	if got, v := p.Open.Open(d); v != tunnel.OK || !bytes.Equal(got, inner) {
		t.Fatalf("the agent opened %q: %v", got, v)
	}
	r.cancel()
	r.wg.Wait()
	if cur.Load() != nil {
		t.Fatal("the client still offers the tunnel keys of a closed connection")
	}
	if tab.Len() != 0 {
		t.Fatalf("the agent still holds %d tunnels after its copy daemon left", tab.Len())
	}
}

// TestTunnelNeedsSecret: a session without authentication has no tunnel
// keys on the agent's side.
func TestTunnelNeedsSecret(t *testing.T) {
	tab := tunnel.NewTable()
	r := newRig(t, AgentConfig{Tunnels: tab, InsecureNoAuth: true}, ClientConfig{})
	r.connected()
	if tab.Len() != 0 {
		t.Fatal("tunnel keys from an unauthenticated session")
	}
}
