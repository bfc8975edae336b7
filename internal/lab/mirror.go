//go:build linux

package lab

import (
	"context"
	"fmt"
	"net"
	"strconv"

	"github.com/vishvananda/netlink"
)

// The mirror topology: prod's client-facing NIC mirrored, both
// directions, into a VXLAN device toward the assist, which plays the
// mirror target (the host a cloud's traffic mirroring delivers to):
//
//	prod ns: eth0 ─tc clsact ingress+egress: mirred egress mirror─▶ vx0
//	         vx0: VXLAN VNI n, 198.18.1.1 → 198.18.1.3 UDP 4789, over eth1
//	assist ns: no VXLAN device; a UDP socket on 198.18.1.3:4789 reads the session
//
// The outer datagrams cross the segment like any other (fragmented when
// a full-sized frame plus 50 bytes of VXLAN exceeds the MTU; the target's
// kernel reassembles them).

// MirrorLink is prod's VXLAN device carrying the mirror session.
const MirrorLink = "vx0"

// MirrorPort is the UDP port the session is sent to.
const MirrorPort = 4789

// MirrorProd mirrors every frame prod's client link receives and sends
// into a VXLAN session with vni toward the assist's MirrorPort. It is
// undone with the lab.
func (l *Lab) MirrorProd(ctx context.Context, vni int) error {
	under, err := l.Prod.h.LinkByName(ProdSegmentLink)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", ProdSegmentLink, l.Prod.name, err)
	}
	vx := &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: MirrorLink, MTU: l.cfg.MTU},
		VxlanId:      vni,
		VtepDevIndex: under.Attrs().Index,
		SrcAddr:      net.IP(ProdV4.AsSlice()),
		Group:        net.IP(AssistV4.AsSlice()), // a unicast remote
		Port:         MirrorPort,
		Learning:     false,
	}
	if err := l.Prod.h.LinkAdd(vx); err != nil {
		return fmt.Errorf("add %s in %s: %w", MirrorLink, l.Prod.name, err)
	}
	link, err := l.Prod.h.LinkByName(MirrorLink)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", MirrorLink, l.Prod.name, err)
	}
	if err := l.Prod.h.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up in %s: %w", MirrorLink, l.Prod.name, err)
	}
	steps := [][]string{
		{"qdisc", "add", "dev", ProdClientLink, "clsact"},
		{"filter", "add", "dev", ProdClientLink, "ingress", "protocol", "all", "u32", "match", "u32", "0", "0",
			"action", "mirred", "egress", "mirror", "dev", MirrorLink},
		{"filter", "add", "dev", ProdClientLink, "egress", "protocol", "all", "u32", "match", "u32", "0", "0",
			"action", "mirred", "egress", "mirror", "dev", MirrorLink},
	}
	for _, s := range steps {
		if _, err := l.Prod.Run(ctx, "tc", s...); err != nil {
			return err
		}
	}
	return nil
}

// MirrorTarget is where MirrorProd's session arrives, as a copy
// --capture URL.
func MirrorTarget(vni int) string {
	return "vxlan://" + net.JoinHostPort(AssistV4.String(), strconv.Itoa(MirrorPort)) + "?vni=" + strconv.Itoa(vni)
}
