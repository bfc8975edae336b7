package doctortest

import "github.com/tcpshadow/tcpshadow/internal/doctor"

var _ doctor.OutputHost = (*Host)(nil)

// OutputChains implements doctor.OutputHost.
func (h *Host) OutputChains() ([]string, error) { return h.OutChains, h.OutErr }
