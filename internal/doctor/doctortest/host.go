// Package doctortest provides an in-memory doctor.Host for tests: every
// setting the checks read is a field, and nothing touches the system.
package doctortest

import (
	"fmt"
	"io/fs"
	"net/netip"

	"github.com/tcpshadow/tcpshadow/internal/doctor"
)

// Route is a configured route: packets to Dst take Route.
type Route struct {
	Dst   netip.Prefix
	Route doctor.Route
}

// Host is a fake doctor.Host. The zero value has no sysctls, no routes
// and no links; errors left nil mean success.
type Host struct {
	Sysctls   map[string]int // by /proc/sys path; missing: fs.ErrNotExist
	Routes    []Route        // longest prefix wins; none: doctor.ErrNoRoute
	Links     []string       // interfaces that exist
	GRO, LRO  map[string]bool
	GROMax    map[string]int // gro_max_size by interface
	Listening map[uint16][]doctor.Listener

	OffloadErr, CaptureErr, RawErr error
	DropChains                     []string
	ChainsErr                      error // doctor.ErrNotChecked: as without nft
	OutChains                      []string
	OutErr                         error // OutputChains' error
}

var _ doctor.Host = (*Host)(nil)

// Sysctl implements doctor.Host.
func (h *Host) Sysctl(path string) (int, error) {
	v, ok := h.Sysctls[path]
	if !ok {
		return 0, fmt.Errorf("sysctl %s: %w", path, fs.ErrNotExist)
	}
	return v, nil
}

// RouteTo implements doctor.Host.
func (h *Host) RouteTo(dst netip.Addr) (doctor.Route, error) {
	best := -1
	var out doctor.Route
	for _, r := range h.Routes {
		if r.Dst.Contains(dst) && r.Dst.Bits() > best {
			best, out = r.Dst.Bits(), r.Route
		}
	}
	if best < 0 {
		return doctor.Route{}, doctor.ErrNoRoute
	}
	return out, nil
}

// Link implements doctor.Host.
func (h *Host) Link(name string) error {
	for _, l := range h.Links {
		if l == name {
			return nil
		}
	}
	return fmt.Errorf("route ip+net: no such network interface")
}

// GROMaxSize implements doctor.Host: GROMax[iface], 65536 if unset.
func (h *Host) GROMaxSize(iface string) (int, error) {
	if n, ok := h.GROMax[iface]; ok {
		return n, nil
	}
	return 65536, nil
}

// Offloads implements doctor.Host.
func (h *Host) Offloads(iface string) (bool, bool, error) {
	return h.GRO[iface], h.LRO[iface], h.OffloadErr
}

// CanCapture implements doctor.Host.
func (h *Host) CanCapture(string) error { return h.CaptureErr }

// CanSendRaw implements doctor.Host.
func (h *Host) CanSendRaw() error { return h.RawErr }

// Listeners implements doctor.Host.
func (h *Host) Listeners(port uint16) ([]doctor.Listener, error) { return h.Listening[port], nil }

// InputDropChains implements doctor.Host.
func (h *Host) InputDropChains() ([]string, error) { return h.DropChains, h.ChainsErr }
