package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"

	"github.com/spf13/cobra"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

type routeOptions struct {
	via      string
	to       []string
	dev      string
	table    int
	priority int
}

// routeConfig is a validated route request: replies for each prefix go to
// the assist host.
type routeConfig struct {
	via      netip.Addr
	to       []netip.Prefix
	dev      string
	table    int
	priority int
}

func newRouteCmd(g *globalOptions) *cobra.Command {
	o := &routeOptions{}
	cmd := &cobra.Command{
		Use:   "route add|del|show",
		Short: "Route the shadow's replies to the assist host (runs on the shadow host)",
		Long: `route manages the routes that send the shadow's replies for the client
addresses (or the client pool) to the assist host, where they die. add is
idempotent; with --table the routes go into a dedicated table selected by a
policy rule per prefix.`,
		// Without Args and RunE cobra prints help and exits 0 for any
		// word after route, so a mistyped subcommand would look done.
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	add := &cobra.Command{
		Use: "add --via ASSIST --to PREFIX [--to PREFIX...]", Short: "Add or replace the routes", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := o.config(true)
			if err != nil {
				return err
			}
			return routeAdd(cfg, cmd.OutOrStdout())
		},
	}
	del := &cobra.Command{
		Use: "del --to PREFIX [--to PREFIX...]", Short: "Delete the routes (and rules)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := o.config(false)
			if err != nil {
				return err
			}
			return routeDel(cfg, cmd.OutOrStdout())
		},
	}
	show := &cobra.Command{
		Use: "show [--to PREFIX...]", Short: "Show how replies to each prefix are routed", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := o.config(false)
			if err != nil {
				return err
			}
			return routeShow(cfg, cmd.OutOrStdout())
		},
	}
	for _, c := range []*cobra.Command{add, del, show} {
		f := c.Flags()
		f.StringSliceVar(&o.to, "to", nil, "client address range or client pool, e.g. 198.19.0.0/16 (repeatable)")
		f.IntVar(&o.table, "table", 0, "routing table for the routes, with a policy rule each (0: main table)")
		f.IntVar(&o.priority, "priority", 1000, "policy rule priority with --table")
	}
	add.Flags().StringVar(&o.via, "via", "", "the assist host's address (next hop)")
	add.Flags().StringVar(&o.dev, "dev", "", "outgoing interface (default: the one that reaches --via)")
	cmd.AddCommand(add, del, show)
	return cmd
}

func (o *routeOptions) config(needVia bool) (*routeConfig, error) {
	cfg := &routeConfig{dev: o.dev, table: o.table, priority: o.priority}
	if needVia {
		if o.via == "" {
			return nil, errors.New("--via is required: the assist host's address")
		}
		a, err := netip.ParseAddr(o.via)
		if err != nil {
			return nil, fmt.Errorf("--via %q: want an IP address", o.via)
		}
		cfg.via = a.Unmap()
	}
	if len(o.to) == 0 && needVia {
		return nil, errors.New("--to is required: the client range or pool to route")
	}
	for _, s := range o.to {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("--to %q: want a prefix such as 198.19.0.0/16", s)
		}
		p = p.Masked()
		if needVia && p.Addr().Is4() != cfg.via.Is4() {
			return nil, fmt.Errorf("--to %v: --via %v is of the other address family", p, cfg.via)
		}
		cfg.to = append(cfg.to, p)
	}
	if o.table < 0 || o.table > 0xfffffff0 || o.table == unix.RT_TABLE_LOCAL {
		return nil, fmt.Errorf("--table %d: want 0 (main) or a free table id", o.table)
	}
	if o.priority < 1 || o.priority > 32765 {
		return nil, fmt.Errorf("--priority %d: want 1..32765", o.priority)
	}
	return cfg, nil
}

func family(p netip.Prefix) int {
	if p.Addr().Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func (c *routeConfig) route(p netip.Prefix) (*netlink.Route, error) {
	r := &netlink.Route{Dst: ipNet(p), Table: c.table}
	if c.via.IsValid() {
		r.Gw = c.via.AsSlice()
	}
	if c.dev != "" {
		link, err := netlink.LinkByName(c.dev)
		if err != nil {
			return nil, fmt.Errorf("--dev %q: %w", c.dev, err)
		}
		r.LinkIndex = link.Attrs().Index
	}
	return r, nil
}

func (c *routeConfig) rule(p netip.Prefix) *netlink.Rule {
	r := netlink.NewRule()
	r.Dst = ipNet(p)
	r.Table = c.table
	r.Priority = c.priority
	r.Family = family(p)
	return r
}

func (c *routeConfig) hasRule(p netip.Prefix) (bool, error) {
	rules, err := netlink.RuleList(family(p))
	if err != nil {
		return false, fmt.Errorf("list rules: %w", err)
	}
	for _, r := range rules {
		if r.Table == c.table && r.Dst != nil && r.Dst.String() == ipNet(p).String() {
			return true, nil
		}
	}
	return false, nil
}

func routeAdd(c *routeConfig, out io.Writer) error {
	for _, p := range c.to {
		r, err := c.route(p)
		if err != nil {
			return err
		}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("route %v via %v: %w", p, c.via, err)
		}
		if c.table != 0 {
			ok, err := c.hasRule(p)
			if err != nil {
				return err
			}
			if !ok {
				if err := netlink.RuleAdd(c.rule(p)); err != nil {
					return fmt.Errorf("rule to %v lookup %d: %w", p, c.table, err)
				}
			}
		}
		fmt.Fprintf(out, "%v via %v%s\n", p, c.via, tableSuffix(c.table))
	}
	return nil
}

func routeDel(c *routeConfig, out io.Writer) error {
	if len(c.to) == 0 {
		return errors.New("--to is required")
	}
	for _, p := range c.to {
		r, err := c.route(p)
		if err != nil {
			return err
		}
		if err := netlink.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("delete route %v: %w", p, err)
		}
		if c.table != 0 {
			if ok, _ := c.hasRule(p); ok {
				if err := netlink.RuleDel(c.rule(p)); err != nil {
					return fmt.Errorf("delete rule to %v: %w", p, err)
				}
			}
		}
		fmt.Fprintf(out, "%v removed%s\n", p, tableSuffix(c.table))
	}
	return nil
}

// routeShow prints, for each prefix, the route the kernel would use for a
// reply to its first address.
func routeShow(c *routeConfig, out io.Writer) error {
	if len(c.to) == 0 {
		routes, err := netlink.RouteList(nil, netlink.FAMILY_ALL)
		if err != nil {
			return fmt.Errorf("list routes: %w", err)
		}
		for _, r := range routes {
			fmt.Fprintln(out, r.String())
		}
		return nil
	}
	for _, p := range c.to {
		probe := p.Addr().Next()
		if !p.Contains(probe) {
			probe = p.Addr()
		}
		rs, err := netlink.RouteGet(probe.AsSlice())
		if err != nil {
			fmt.Fprintf(out, "%v: no route (%v)\n", p, err)
			continue
		}
		for _, r := range rs {
			dev := ""
			if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
				dev = l.Attrs().Name
			}
			fmt.Fprintf(out, "%v: via %v dev %s\n", p, r.Gw, dev)
		}
	}
	return nil
}

func tableSuffix(t int) string {
	if t == 0 {
		return ""
	}
	return fmt.Sprintf(" (table %d)", t)
}
