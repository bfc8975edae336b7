package main

import (
	"fmt"
	"net/netip"

	"github.com/spf13/pflag"

	"github.com/tcpshadow/tcpshadow/internal/daemon"
)

// localOptions are the flags of intercept's two-host mode (--local): the
// agent on the shadow host itself.
type localOptions struct {
	on       bool
	to       []string
	queueNum int
	queueLen int
	tunnel   bool
	port     int
}

func (o *localOptions) addFlags(f *pflag.FlagSet) {
	def := daemon.DefaultLocalConfig().Queue
	f.BoolVar(&o.on, "local", false, "run on the shadow host itself (two hosts, no assist): take this host's packets to the --to pools away from the network with nftables rules and an NFQUEUE, instead of capturing on --iface")
	f.StringSliceVar(&o.to, "to", nil, "--local: a client pool whose packets are taken (the copy daemons' --client-pool; repeatable, one per family)")
	f.IntVar(&o.queueNum, "queue-num", int(def.Num), "--local: the NFQUEUE number the rules queue to")
	f.BoolVar(&o.tunnel, "tunnel", false, "--local: receive copy daemons' --transport udp datagrams (sealed with the control channel's keys) and inject their packets into this host's stack; needs --secret-file and CAP_NET_RAW")
	f.IntVar(&o.port, "tunnel-port", daemon.DefaultLocalConfig().TunnelPort, "--tunnel: the UDP port, at --listen's address")
	f.IntVar(&o.queueLen, "queue-len", int(def.MaxLen), "--local: packets the kernel holds for the agent; more are dropped (counted), never sent")
}

// config returns the two-host configuration, nil without --local. n
// names a flag as the user set it (flag or config key).
func (o *localOptions) config(n func(string) string, iface, filter string) (*daemon.LocalConfig, error) {
	if !o.on {
		for _, f := range []struct {
			name string
			set  bool
		}{{"to", len(o.to) > 0}, {"tunnel", o.tunnel}} {
			if f.set {
				return nil, fmt.Errorf("%s needs %s", n(f.name), n("local"))
			}
		}
		return nil, nil
	}
	if iface != "" || filter != "" {
		return nil, fmt.Errorf("%s reads this host's own packets from a queue: %s and %s do not apply", n("local"), n("iface"), n("filter"))
	}
	if len(o.to) == 0 {
		return nil, fmt.Errorf("%s needs %s: the client pools whose packets the agent takes", n("local"), n("to"))
	}
	c := daemon.DefaultLocalConfig()
	for _, s := range o.to {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%s %q: want a prefix such as 198.19.0.0/16", n("to"), s)
		}
		c.Pools = append(c.Pools, p.Masked())
	}
	if o.queueNum < 0 || o.queueNum > 65535 {
		return nil, fmt.Errorf("%s %d: want 0..65535", n("queue-num"), o.queueNum)
	}
	if o.queueLen < 1 {
		return nil, fmt.Errorf("%s %d: want at least 1", n("queue-len"), o.queueLen)
	}
	if o.port < 1 || o.port > 65535 {
		return nil, fmt.Errorf("%s %d: want 1..65535", n("tunnel-port"), o.port)
	}
	c.Queue.Num, c.Queue.MaxLen = uint16(o.queueNum), uint32(o.queueLen)
	c.Tunnel, c.TunnelPort = o.tunnel, o.port
	return &c, nil
}
