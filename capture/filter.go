package capture

import (
	"net/netip"
	"strconv"
	"strings"
)

// FilterFor returns a BPF expression selecting TCP packets sent to any of
// dsts and to none of exclude. A dst with an unspecified address (0.0.0.0
// or ::) matches its port on every address of that family; one with an
// invalid address matches its port on every address. The copy daemon
// excludes its own targets so that it never captures what it sends, even
// with interface "any" or when prod and shadow use the same port.
func FilterFor(dsts, exclude []netip.AddrPort) string { return filter("dst", dsts, exclude) }

// FilterFrom is FilterFor for packets sent from any of srcs: prod's
// answers to the clients of the maps.
func FilterFrom(srcs, exclude []netip.AddrPort) string { return filter("src", srcs, exclude) }

func filter(dir string, eps, exclude []netip.AddrPort) string {
	var b strings.Builder
	b.WriteString("tcp and (")
	for i, d := range eps {
		if i > 0 {
			b.WriteString(" or ")
		}
		b.WriteString("(" + dir + " port ")
		b.WriteString(strconv.Itoa(int(d.Port())))
		switch a := d.Addr().Unmap(); {
		case a == netip.IPv4Unspecified():
			b.WriteString(" and ip")
		case a == netip.IPv6Unspecified():
			b.WriteString(" and ip6")
		case a.IsValid():
			b.WriteString(" and " + dir + " host ")
			b.WriteString(a.String())
		}
		b.WriteString(")")
	}
	b.WriteString(")")
	for _, x := range exclude {
		b.WriteString(" and not (dst host ")
		b.WriteString(x.Addr().Unmap().String())
		b.WriteString(" and dst port ")
		b.WriteString(strconv.Itoa(int(x.Port())))
		b.WriteString(")")
	}
	return b.String()
}
