package lab

import "net/netip"

// The two-host topology (Config.TwoHosts), for the agent on the shadow
// (intercept --local):
//
//	client ns ─veth─ prod ns ─veth─┐
//	                 switch ns: br0 ┤
//	                                └─veth─ shadow ns
//
// Addresses are the four-host lab's, without the assist. The shadow routes
// the client net and the pools via prod's segment address: a reply the
// agent did not take leaves on the segment towards prod (whose forwarding
// is off, so it goes no further), where a test can see it.

// roles are the namespaces the lab creates, in creation order.
func (l *Lab) roles() []string {
	if l.cfg.TwoHosts {
		return []string{RoleClient, RoleProd, RoleShadow, RoleSwitch}
	}
	return []string{RoleClient, RoleProd, RoleShadow, RoleAssist, RoleSwitch}
}

// shadowRoute is one route of the shadow's.
type shadowRoute struct {
	dst netip.Prefix
	gw  netip.Addr
}

// shadowRoutes are the shadow's routes for the client net and the pools:
// via the assist, or via prod with two hosts.
func (l *Lab) shadowRoutes() []shadowRoute {
	gw4, gw6 := AssistV4, AssistV6
	if l.cfg.TwoHosts {
		gw4, gw6 = ProdV4, ProdV6
	}
	return []shadowRoute{{ClientNetV4, gw4}, {PoolV4, gw4}, {ClientNetV6, gw6}, {PoolV6, gw6}}
}

// present returns the namespaces that exist.
func present(ns ...*NS) []*NS {
	var out []*NS
	for _, n := range ns {
		if n != nil {
			out = append(out, n)
		}
	}
	return out
}

// presentVeths returns the pairs whose ends both exist.
func presentVeths(vs []veth) []veth {
	var out []veth
	for _, v := range vs {
		if v.ns != nil && v.peerNS != nil {
			out = append(out, v)
		}
	}
	return out
}
