package divert

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"golang.org/x/sys/unix"
)

// The rules' names and place, written once: doctor and the tests read
// them from here.
const (
	TableName = "tcpshadow_local"
	ChainName = "divert"
	// Priority runs the chain before conntrack (-200) and destination
	// NAT (-100) on the output hook, and before the raw table (-300):
	// diverted packets take no conntrack entry, and their destination is
	// still the pool address when the rule looks at it.
	Priority = -310
)

// Rules is what Install puts in place: every packet this host sends to
// one of Pools goes to queue Queue.
type Rules struct {
	Queue uint16
	Pools []netip.Prefix
	// opts are the tests': another network namespace, a fake netlink
	// socket. None: the process's namespace.
	opts []nftables.ConnOption
}

func (r *Rules) conn() (*nftables.Conn, error) {
	c, err := nftables.New(r.opts...)
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return c, nil
}

// table and chain are the objects Install creates.
func table() *nftables.Table {
	return &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
}

func chain(t *nftables.Table) *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{
		Name: ChainName, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityRef(Priority), Policy: &accept,
	}
}

// poolExprs is "ip[6] daddr POOL counter queue num Queue" for one pool:
// no bypass flag, so that with no agent bound the kernel drops.
func (r *Rules) poolExprs(p netip.Prefix) []expr.Any {
	p = p.Masked()
	proto, off, n := byte(unix.NFPROTO_IPV4), uint32(16), uint32(4) // IPv4 daddr
	if p.Addr().Is6() {
		proto, off, n = unix.NFPROTO_IPV6, 24, 16 // IPv6 daddr
	}
	es := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
	}
	if p.Bits() < p.Addr().BitLen() {
		mask := netip.PrefixFrom(p.Addr(), p.Bits())
		es = append(es, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n,
			Mask: prefixMask(mask), Xor: make([]byte, n)})
	}
	return append(es,
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Addr().AsSlice()},
		&expr.Counter{},
		queueTarget(r.Queue),
	)
}

// queueTarget is the queue statement, as the x_tables NFQUEUE target
// (revision 3) run by nftables' compat expression, as iptables-nft writes
// it: kernels built without the native queue expression (CONFIG_NFT_QUEUE
// off, as on the lab's) still have it. Its flags are 0: no bypass, no CPU
// fanout.
func queueTarget(num uint16) *expr.Target {
	info := make(xt.Unknown, 8) // struct xt_NFQ_info_v3, padded to 8
	binary.NativeEndian.PutUint16(info[0:], num)
	binary.NativeEndian.PutUint16(info[2:], 1) // queues_total
	return &expr.Target{Name: "NFQUEUE", Rev: 3, Info: &info}
}

// nfqBypass is NFQ_FLAG_BYPASS of xt_NFQ_info_v3's flags.
const nfqBypass = 0x1

// prefixMask is p's netmask, as bytes.
func prefixMask(p netip.Prefix) []byte {
	m := make([]byte, p.Addr().BitLen()/8)
	for i := range p.Bits() {
		m[i/8] |= 0x80 >> (i % 8)
	}
	return m
}

// Install puts the rules in place, replacing whatever a previous run left
// of its table (a SIGKILL leaves it) in the same netlink transaction, so
// that the pools are never without a rule. It reports whether a table was
// there before.
func (r *Rules) Install() (replaced bool, err error) {
	if len(r.Pools) == 0 {
		return false, errors.New("nftables: no pool to divert")
	}
	c, err := r.conn()
	if err != nil {
		return false, err
	}
	if _, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet); err == nil {
		replaced = true
	}
	t := table()
	// Add (a no-op if it exists), delete, and add again: one transaction
	// that works whether or not the table was there.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	ch := c.AddChain(chain(t))
	for _, p := range r.Pools {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: r.poolExprs(p)})
	}
	if err := c.Flush(); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, fmt.Errorf("nftables: install table inet %s: %w (the kernel lacks the NFQUEUE target: modprobe nft_compat xt_NFQUEUE)", TableName, err)
		}
		return false, fmt.Errorf("nftables: install table inet %s: %w", TableName, err)
	}
	return replaced, nil
}

// Remove deletes the table, if it is there.
func (r *Rules) Remove() error {
	c, err := r.conn()
	if err != nil {
		return err
	}
	if _, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet); err != nil {
		return nil // not there: nothing to do
	}
	c.DelTable(table())
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: delete table inet %s: %w", TableName, err)
	}
	return nil
}

// Installed is what Inspect finds of the rules in the kernel.
type Installed struct {
	Table bool // the table exists
	Chain bool // and holds the chain
	// The chain's place: hook, priority, type and policy.
	Hook     nftables.ChainHook
	Priority int32
	Type     nftables.ChainType
	Policy   nftables.ChainPolicy
	Rules    []PoolRule // the chain's rules, in order
	// Earlier names the other base chains on the output hook that run
	// before this one ("inet filter output"): they see the pools'
	// packets first.
	Earlier []string
}

// PoolRule is one installed rule as Inspect reads it back.
type PoolRule struct {
	Pool    netip.Prefix // invalid when the rule is not one Install writes
	Queue   uint16
	Queued  bool // the rule ends in a queue statement
	Bypass  bool // its queue statement has the bypass flag (packets pass with no agent)
	Packets uint64
}

// Inspect reads the rules back from the kernel, for doctor.
func Inspect() (Installed, error) { return (&Rules{}).inspect() }

func (r *Rules) inspect() (Installed, error) {
	var in Installed
	c, err := r.conn()
	if err != nil {
		return in, err
	}
	t, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet)
	if err != nil {
		return in, nil // no table
	}
	in.Table = true
	chains, err := c.ListChains()
	if err != nil {
		return in, fmt.Errorf("nftables: list chains: %w", err)
	}
	var ours *nftables.Chain
	for _, ch := range chains {
		if ch.Table.Name == TableName && ch.Table.Family == nftables.TableFamilyINet && ch.Name == ChainName {
			ours = ch
		}
	}
	if ours == nil || ours.Hooknum == nil || ours.Priority == nil {
		return in, nil
	}
	in.Chain, in.Hook, in.Priority, in.Type = true, *ours.Hooknum, int32(*ours.Priority), ours.Type
	if ours.Policy != nil {
		in.Policy = *ours.Policy
	}
	for _, ch := range chains {
		if ch == ours || ch.Hooknum == nil || ch.Priority == nil || *ch.Hooknum != *nftables.ChainHookOutput {
			continue
		}
		fam := ch.Table.Family
		if fam != nftables.TableFamilyINet && fam != nftables.TableFamilyIPv4 && fam != nftables.TableFamilyIPv6 {
			continue
		}
		if int32(*ch.Priority) <= in.Priority {
			in.Earlier = append(in.Earlier, fmt.Sprintf("%s %s %s", familyName(fam), ch.Table.Name, ch.Name))
		}
	}
	slices.Sort(in.Earlier)
	rules, err := c.GetRules(t, ours)
	if err != nil {
		return in, fmt.Errorf("nftables: list rules: %w", err)
	}
	for _, rule := range rules {
		in.Rules = append(in.Rules, readRule(rule.Exprs))
	}
	return in, nil
}

// readRule reads back a rule Install wrote: its pool, counter and queue.
func readRule(es []expr.Any) PoolRule {
	var pr PoolRule
	var proto byte
	var mask []byte
	var addr []byte
	for _, e := range es {
		switch e := e.(type) {
		case *expr.Cmp:
			switch {
			case len(e.Data) == 1:
				proto = e.Data[0]
			case len(e.Data) == 4 || len(e.Data) == 16:
				addr = e.Data
			}
		case *expr.Bitwise:
			mask = e.Mask
		case *expr.Counter:
			pr.Packets = e.Packets
		case *expr.Queue: // the native statement, written by someone else
			pr.Queued, pr.Queue, pr.Bypass = true, e.Num, e.Flag&expr.QueueFlagBypass != 0
		case *expr.Target:
			if info, ok := e.Info.(*xt.Unknown); ok && e.Name == "NFQUEUE" && len(*info) >= 4 {
				pr.Queued, pr.Queue = true, binary.NativeEndian.Uint16((*info)[0:])
				pr.Bypass = e.Rev >= 2 && len(*info) >= 6 && binary.NativeEndian.Uint16((*info)[4:])&nfqBypass != 0
			}
		}
	}
	a, ok := netip.AddrFromSlice(addr)
	if !ok || (proto == unix.NFPROTO_IPV4) != a.Is4() {
		return pr
	}
	bits := a.BitLen()
	if mask != nil {
		bits = 0
		for _, b := range mask {
			for ; b&0x80 != 0; b <<= 1 {
				bits++
			}
		}
	}
	pr.Pool = netip.PrefixFrom(a, bits)
	return pr
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	}
	return fmt.Sprintf("family%d", f)
}
