package doctor

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"syscall"
)

// ErrNoTunnelAck is what ProbeEnv.Tunnel returns when the agent answered
// no probe datagram (tunnelsock.ErrNoAck, wrapped or not).
var ErrNoTunnelAck = errors.New("no answer to the tunnel's probe")

// tunnelFailure says why the tunnel is not usable, with the control
// channel up: the UDP port blocked between prod and the shadow, nothing
// listening there, or no keys for the session.
func tunnelFailure(c ProbeConfig, agent string, err error) Result {
	r := Result{Check: "probe " + c.Target.String(), Status: Fail}
	port := strconv.Itoa(c.TunnelPort)
	at := net.JoinHostPort(c.Assist, port)
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		r.Detail = fmt.Sprintf("the tunnel: udp %s refused (port unreachable) while agent %q answers on the control channel: "+
			"the agent does not receive the tunnel there (run without --tunnel, or with another --tunnel-port)", at, agent)
		r.Fix = fmt.Sprintf("on the shadow: tcpshadow intercept --local --tunnel --tunnel-port %s ...", port)
	case errors.Is(err, ErrNoTunnelAck):
		r.Detail = fmt.Sprintf("the tunnel: no answer to a probe datagram on udp %s while agent %q answers on the control channel: "+
			"UDP port %s is blocked between this host and the shadow (a security group, a firewall on either host), "+
			"or the agent runs without --tunnel", at, agent, port)
		r.Fix = fmt.Sprintf("allow UDP %s from this host to the shadow and back; on the shadow: nft list ruleset | grep %s; "+
			"tcpshadow intercept --local --tunnel ...", port, port)
	default:
		r.Detail = fmt.Sprintf("the tunnel to udp %s: %v", at, err)
	}
	return r
}

// tunnelFix is the advice for a network that drops forged sources: the
// tunnel, with the agent on the shadow.
func tunnelFix(c ProbeConfig) string {
	return fmt.Sprintf("copy through the tunnel instead: on the shadow tcpshadow intercept --local --tunnel --to %v ...; "+
		"on prod tcpshadow copy --transport udp ... (UDP %d open from prod to the shadow)", c.Pool, c.TunnelPort)
}
