package doctor

import (
	"github.com/tcpshadow/tcpshadow/intercept/divert"
)

// DivertRules reads the agent's nftables table in this network namespace.
func (System) DivertRules() (divert.Installed, error) { return divert.Inspect() }

// Queue reads NFQUEUE num from the kernel's table of this network
// namespace.
func (System) Queue(num uint16) (divert.KernelQueue, error) {
	return divert.ReadKernelQueue("/proc/net/netfilter/nfnetlink_queue", num)
}
