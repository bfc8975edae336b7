package main

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/tcpshadow/tcpshadow/internal/doctor"
)

// localConfig is doctor --role shadow --local: the two-host shadow, with
// the agent on it.
func (o *doctorOptions) localConfig(cfg *doctorConfig, to []netip.Prefix) error {
	if len(o.via) > 0 || o.prod != "" {
		return errors.New("--via and --prod do not apply with --local: the agent runs on this host")
	}
	if len(to) == 0 {
		return errors.New("--to is required: the client pools the agent diverts (its --to)")
	}
	if o.queueNum < 0 || o.queueNum > 65535 {
		return fmt.Errorf("--queue-num %d: want 0..65535", o.queueNum)
	}
	cfg.local = &doctor.ShadowLocalConfig{To: to, Queue: uint16(o.queueNum)}
	return nil
}
