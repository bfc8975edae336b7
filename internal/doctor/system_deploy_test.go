package doctor

import (
	"slices"
	"testing"
)

// TestParseOutputChains: chains on the output and postrouting hooks with
// rules or a drop policy are named; empty accepting ones, other hooks,
// and the bridge family are not.
func TestParseOutputChains(t *testing.T) {
	const ruleset = `{"nftables": [
	{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
	{"table": {"family": "inet", "name": "fw", "handle": 1}},
	{"chain": {"family": "inet", "table": "fw", "name": "out", "handle": 1, "type": "filter", "hook": "output", "prio": 0, "policy": "accept"}},
	{"chain": {"family": "inet", "table": "fw", "name": "quiet", "handle": 2, "type": "filter", "hook": "output", "prio": 10, "policy": "accept"}},
	{"chain": {"family": "ip", "table": "nat", "name": "post", "handle": 3, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}},
	{"chain": {"family": "ip6", "table": "lock", "name": "out", "handle": 4, "type": "filter", "hook": "output", "prio": 0, "policy": "drop"}},
	{"chain": {"family": "inet", "table": "fw", "name": "in", "handle": 5, "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}},
	{"chain": {"family": "bridge", "table": "sw", "name": "out", "handle": 6, "type": "filter", "hook": "output", "prio": 0, "policy": "accept"}},
	{"chain": {"family": "inet", "table": "fw", "name": "helper", "handle": 7}},
	{"rule": {"family": "inet", "table": "fw", "chain": "out", "handle": 8, "expr": []}},
	{"rule": {"family": "inet", "table": "fw", "chain": "out", "handle": 9, "expr": []}},
	{"rule": {"family": "ip", "table": "nat", "chain": "post", "handle": 10, "expr": []}},
	{"rule": {"family": "bridge", "table": "sw", "chain": "out", "handle": 11, "expr": []}},
	{"rule": {"family": "inet", "table": "fw", "chain": "helper", "handle": 12, "expr": []}}
]}`
	got, err := parseOutputChains([]byte(ruleset))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"inet fw out (output hook, 2 rules, policy accept)",
		"ip nat post (postrouting hook, 1 rules, policy accept)",
		"ip6 lock out (output hook, 0 rules, policy drop)",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	if _, err := parseOutputChains([]byte("{")); err == nil {
		t.Fatal("bad JSON parsed")
	}
}
