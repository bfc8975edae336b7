package doctor

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/tcpshadow/tcpshadow/capture"
)

// This file holds the checks of the deployment modes: the send path
// (raw IP sockets through the host's netfilter and conntrack, or the
// datalink past them) and a mirror target's session.

// OutputHost is a Host that can also list the netfilter chains raw IP
// sends pass. System is one; a Host that is not leaves the rules out of
// the send-path check.
type OutputHost interface {
	// OutputChains names the base chains on the output and postrouting
	// hooks that hold rules or drop by policy, as "FAMILY TABLE CHAIN
	// (N rules, policy P)"; ErrNotChecked without nft.
	OutputChains() ([]string, error)
}

// Send paths, as copy --send names them.
const (
	SendRaw      = "raw"
	SendDatalink = "datalink"
)

const datalinkFix = "run copy with --send datalink"

// SendPath checks what raw IP sends would pass on this host: a conntrack
// table tracking its flows (every forged flow takes an entry; "table
// full" drops prod's own connections) and OUTPUT or POSTROUTING rules (a
// drop or reject makes every copy fail with EPERM). With the datalink
// path neither applies.
func SendPath(h Host, send string) Result {
	r := Result{Check: "send_path"}
	if send == SendDatalink {
		r.Detail = "datalink sends (AF_PACKET to the next hop's MAC) pass neither netfilter nor conntrack"
		return r
	}
	var found []string
	count, errCount := h.Sysctl("net/netfilter/nf_conntrack_count")
	max, errMax := h.Sysctl("net/netfilter/nf_conntrack_max")
	switch {
	case errCount == nil && count > 0:
		s := fmt.Sprintf("conntrack tracks this host's flows (%d entries", count)
		if errMax == nil && max > 0 {
			s += fmt.Sprintf(" of %d", max)
		}
		found = append(found, s+"): each forged flow would take one more")
	case errCount != nil && !errors.Is(errCount, fs.ErrNotExist):
		found = append(found, fmt.Sprintf("cannot read the conntrack table's size: %v", errCount))
	}
	if oh, ok := h.(OutputHost); ok {
		chains, err := oh.OutputChains()
		switch {
		case err == nil && len(chains) > 0:
			found = append(found, "raw sends pass "+strings.Join(chains, ", ")+": a drop or reject there fails every copy with EPERM")
		case err != nil && !errors.Is(err, ErrNotChecked):
			found = append(found, fmt.Sprintf("cannot list the output chains: %v", err))
		}
	}
	if len(found) == 0 {
		r.Detail = "raw IP sends pass no conntrack table in use and no output rule"
		return r
	}
	r.Status, r.Detail, r.Fix = Warn, strings.Join(found, "; "), datalinkFix
	return r
}

// MirrorListen is how long doctor listens to a mirror session by default.
const MirrorListen = 5 * time.Second

// ListenMirror reads the mirror session cfg for d (or until ctx is done)
// and returns what it counted.
func ListenMirror(ctx context.Context, cfg capture.MirrorConfig, d time.Duration) (capture.MirrorStats, error) {
	src, err := capture.OpenMirror(cfg)
	if err != nil {
		return capture.MirrorStats{}, err
	}
	defer src.Close()
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for ctx.Err() == nil {
		if _, _, err := src.Read(); err != nil && !errors.Is(err, capture.ErrTimeout) {
			break
		}
	}
	return src.(capture.MirrorStatser).MirrorStats(), nil
}

// MirrorResult judges what listening to session for listened gave: a
// session delivering nothing, only frames it cannot use, or truncated
// frames is named.
func MirrorResult(session string, st capture.MirrorStats, listened time.Duration, err error) Result {
	r := Result{Check: "mirror " + session}
	switch {
	case err != nil:
		r.Status, r.Detail = Fail, fmt.Sprintf("cannot listen: %v", err)
		if strings.Contains(err.Error(), "address already in use") {
			r.Detail += " (a VXLAN or GENEVE device, or another copy daemon, holds the port)"
		}
		return r
	case st.Datagrams == 0:
		r.Status = Fail
		r.Detail = fmt.Sprintf("no datagram in %v: the session delivers nothing here (its target, its filter, "+
			"a firewall or security group on the UDP port, or no traffic on prod)", listened)
		return r
	case st.Frames == 0:
		r.Status = Fail
		r.Detail = fmt.Sprintf("%d datagrams, no usable frame: %d malformed tunnel headers, %d of another VNI, %d not IP",
			st.Datagrams, st.BadTunnel, st.OtherVNI, st.NonIP)
		if st.OtherVNI > 0 {
			r.Fix = "give --capture the session's ?vni=N, or none to take every VNI"
		}
		return r
	case st.Truncated > 0:
		r.Status = Warn
		r.Detail = fmt.Sprintf("%d of %d frames truncated: the mirror cuts frames (AWS to the target's MTU); "+
			"client segments cut so are never copied", st.Truncated, st.Frames)
		r.Fix = "raise the mirror target's MTU (9001 on AWS) or the session's packet length"
		return r
	}
	r.Detail = fmt.Sprintf("%d frames in %v, none truncated (%d of another VNI, %d malformed)", st.Frames, listened, st.OtherVNI, st.BadTunnel)
	return r
}
