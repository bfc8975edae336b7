package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync/atomic"

	"github.com/vishvananda/netlink"
)

// localAddrs is the set of this host's own addresses, kept current from
// the kernel's address notifications: a port-only map copies only what is
// addressed to the host, and addresses come and go (DHCP, failover, a
// VIP moving in). Reads are lock-free, one map lookup per packet.
type localAddrs struct {
	set atomic.Pointer[map[netip.Addr]struct{}]
	log *slog.Logger
}

// followLocalAddrs reads the host's addresses and follows their changes
// until ctx is done.
func followLocalAddrs(ctx context.Context, log *slog.Logger) (func(netip.Addr) bool, error) {
	la := &localAddrs{log: log}
	updates := make(chan netlink.AddrUpdate, 64)
	done := make(chan struct{})
	// Subscribe first, so that no change between the list and the
	// subscription is missed.
	err := netlink.AddrSubscribeWithOptions(updates, done, netlink.AddrSubscribeOptions{
		ErrorCallback: func(err error) { log.Warn("following the host's addresses", "err", err) },
	})
	if err != nil {
		return nil, fmt.Errorf("follow local addresses: %w", err)
	}
	if err := la.reload(); err != nil {
		close(done)
		return nil, err
	}
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case _, ok := <-updates:
				if !ok {
					return
				}
				if err := la.reload(); err != nil {
					log.Warn("reading the host's addresses", "err", err)
				}
			}
		}
	}()
	return la.contains, nil
}

// reload lists every address of every interface.
func (la *localAddrs) reload() error {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list local addresses: %w", err)
	}
	set := make(map[netip.Addr]struct{}, len(addrs))
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			set[ip.Unmap()] = struct{}{}
		}
	}
	la.set.Store(&set)
	return nil
}

func (la *localAddrs) contains(a netip.Addr) bool {
	_, ok := (*la.set.Load())[a.Unmap()]
	return ok
}
