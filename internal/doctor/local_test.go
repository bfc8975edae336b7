package doctor_test

import (
	"net/netip"
	"testing"

	"github.com/google/nftables"

	"github.com/tcpshadow/tcpshadow/intercept/divert"
	"github.com/tcpshadow/tcpshadow/internal/doctor"
)

// localHost fakes what the two-host checks read.
type localHost struct {
	routes map[netip.Addr]doctor.Route
	rules  divert.Installed
	queue  *divert.KernelQueue // nil: not bound
}

func (h *localHost) RouteTo(dst netip.Addr) (doctor.Route, error) {
	if r, ok := h.routes[dst]; ok {
		return r, nil
	}
	return doctor.Route{}, doctor.ErrNoRoute
}

func (h *localHost) DivertRules() (divert.Installed, error) { return h.rules, nil }

func (h *localHost) Queue(num uint16) (divert.KernelQueue, error) {
	if h.queue == nil || h.queue.Num != num {
		return divert.KernelQueue{}, divert.ErrNotBound
	}
	return *h.queue, nil
}

// goodLocal is a shadow whose agent runs as it should.
func goodLocal() *localHost {
	return &localHost{
		routes: map[netip.Addr]doctor.Route{
			netip.MustParseAddr("198.19.0.1"):     {Kind: doctor.Unicast, Gateway: prod4, Dev: "eth0"},
			netip.MustParseAddr("2001:2:0:ff::1"): {Kind: doctor.Unicast, Gateway: netip.MustParseAddr("2001:2:0:1::1"), Dev: "eth0"},
		},
		rules: divert.Installed{
			Table: true, Chain: true, Hook: *nftables.ChainHookOutput, Priority: divert.Priority,
			Type: nftables.ChainTypeFilter, Policy: nftables.ChainPolicyAccept,
			Rules: []divert.PoolRule{
				{Pool: pool4, Queue: divert.DefaultQueueNum, Queued: true, Packets: 12},
				{Pool: pool6, Queue: divert.DefaultQueueNum, Queued: true},
			},
		},
		queue: &divert.KernelQueue{Num: divert.DefaultQueueNum, PortID: 4711, CopyMode: 2, CopyRange: 256},
	}
}

var localCfg = doctor.ShadowLocalConfig{To: []netip.Prefix{pool4, pool6}, Queue: divert.DefaultQueueNum}

func TestShadowLocalGood(t *testing.T) {
	rep := doctor.ShadowLocal(goodLocal(), localCfg)
	checkReport(t, rep, nil)
	if len(rep) != 6 {
		t.Fatalf("%d results, want 6 (rules, 2 divert, queue, 2 no_leak):\n%v", len(rep), rep)
	}
}

func TestShadowLocalProblems(t *testing.T) {
	for _, tc := range []struct {
		name  string
		mod   func(h *localHost)
		cfg   doctor.ShadowLocalConfig
		probs map[string]problem
	}{
		{"no agent ran", func(h *localHost) { h.rules = divert.Installed{}; h.queue = nil }, localCfg, map[string]problem{
			"rules inet tcpshadow_local": {doctor.Fail, []string{"table missing", "tcpshadow intercept --local --to 198.19.0.0/16 --to 2001:2:0:ff::/64"}},
			"divert 198.19.0.0/16":       {doctor.Fail, []string{"rules are missing"}},
			"divert 2001:2:0:ff::/64":    {doctor.Fail, []string{"rules are missing"}},
			"queue 36524":                {doctor.Fail, []string{"no agent bound"}},
			"no_leak 198.19.0.0/16":      {doctor.Fail, []string{"leave via 198.18.1.1 dev eth0"}},
			"no_leak 2001:2:0:ff::/64":   {doctor.Fail, []string{"leave via"}},
		}},
		{"agent killed", func(h *localHost) { h.queue = nil }, localCfg, map[string]problem{
			"queue 36524": {doctor.Fail, []string{"nothing leaks, nothing is copied"}},
		}},
		{"pool not given to the agent", func(h *localHost) { h.rules.Rules = h.rules.Rules[:1] }, localCfg, map[string]problem{
			"divert 2001:2:0:ff::/64":  {doctor.Fail, []string{"no rule for this pool"}},
			"no_leak 2001:2:0:ff::/64": {doctor.Fail, []string{"no working rule"}},
		}},
		{"bypass", func(h *localHost) { h.rules.Rules[0].Bypass = true }, localCfg, map[string]problem{
			"divert 198.19.0.0/16":  {doctor.Fail, []string{"bypass flag"}},
			"no_leak 198.19.0.0/16": {doctor.Fail, []string{"no working rule"}},
		}},
		{"other queue", func(*localHost) {}, doctor.ShadowLocalConfig{To: localCfg.To, Queue: 7}, map[string]problem{
			"divert 198.19.0.0/16":     {doctor.Fail, []string{"queues to 36524, not 7", "--queue-num 36524"}},
			"divert 2001:2:0:ff::/64":  {doctor.Fail, []string{"not 7"}},
			"queue 7":                  {doctor.Fail, []string{"no agent bound"}},
			"no_leak 198.19.0.0/16":    {doctor.Fail, nil},
			"no_leak 2001:2:0:ff::/64": {doctor.Fail, nil},
		}},
		{"after conntrack", func(h *localHost) { h.rules.Priority = 0 }, localCfg, map[string]problem{
			"rules inet tcpshadow_local": {doctor.Fail, []string{"after conntrack"}},
			"no_leak 198.19.0.0/16":      {doctor.Fail, nil},
			"no_leak 2001:2:0:ff::/64":   {doctor.Fail, nil},
		}},
		{"chains before it", func(h *localHost) { h.rules.Earlier = []string{"ip raw output"} }, localCfg, map[string]problem{
			"rules inet tcpshadow_local": {doctor.Warn, []string{"ip raw output"}},
		}},
		{"no route", func(h *localHost) { delete(h.routes, netip.MustParseAddr("198.19.0.1")) }, localCfg, map[string]problem{
			"no_leak 198.19.0.0/16": {doctor.Fail, []string{"no route for the pool", "ip route add 198.19.0.0/16"}},
		}},
		{"blackhole", func(h *localHost) {
			h.routes[netip.MustParseAddr("198.19.0.1")] = doctor.Route{Kind: doctor.Blackhole}
		}, localCfg, map[string]problem{
			"no_leak 198.19.0.0/16": {doctor.Fail, []string{"blackhole route"}},
		}},
		{"queue drops", func(h *localHost) { h.queue.Dropped, h.queue.UserDropped = 3, 4 }, localCfg, map[string]problem{
			"queue 36524": {doctor.Warn, []string{"dropped 3 packets with the queue full and 4", "--queue-len"}},
		}},
		{"metadata only", func(h *localHost) { h.queue.CopyMode = 1 }, localCfg, map[string]problem{
			"queue 36524": {doctor.Fail, []string{"cannot read the headers"}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := goodLocal()
			tc.mod(h)
			checkReport(t, doctor.ShadowLocal(h, tc.cfg), tc.probs)
		})
	}
}
