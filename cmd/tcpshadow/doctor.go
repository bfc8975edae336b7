package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tcpshadow/tcpshadow/capture"
	"github.com/tcpshadow/tcpshadow/intercept"
	"github.com/tcpshadow/tcpshadow/intercept/divert"
	"github.com/tcpshadow/tcpshadow/intercept/tunnel"
	"github.com/tcpshadow/tcpshadow/intercept/wire"
	"github.com/tcpshadow/tcpshadow/internal/doctor"
	"github.com/tcpshadow/tcpshadow/internal/rawsock"
	"github.com/tcpshadow/tcpshadow/internal/tunnelsock"
	"github.com/tcpshadow/tcpshadow/rewrite"
	"github.com/tcpshadow/tcpshadow/tcpstate"
)

// doctorOptions are the doctor command's flags as given.
type doctorOptions struct {
	role         string
	iface        string
	agent        string
	secretFile   string
	tlsCA        string
	tlsName      string
	probe        bool
	maps         []string
	pools        []string
	probeTimeout time.Duration
	via          []string
	to           []string
	prod         string
	listen       string
	send         string
	transport    string
	tunnelPort   int
	capture      string
	mirrorListen time.Duration
	local        bool
	queueNum     int
}

// doctorFlagRoles says which roles each role-specific flag applies to: a
// flag given for another role is a mistake worth naming.
var doctorFlagRoles = map[string][]string{
	"iface":           {"prod", "assist"},
	"intercept":       {"prod"},
	"secret-file":     {"prod"},
	"tls-ca":          {"prod"},
	"tls-server-name": {"prod"},
	"probe":           {"prod"},
	"map":             {"prod"},
	"client-pool":     {"prod"},
	"probe-timeout":   {"prod"},
	"via":             {"shadow"},
	"to":              {"shadow", "assist"},
	"prod":            {"shadow"},
	"listen":          {"assist"},
	"send":            {"prod"},
	"transport":       {"prod"},
	"tunnel-port":     {"prod"},
	"capture":         {"prod"},
	"mirror-listen":   {"prod"},
	"local":           {"shadow"},
	"queue-num":       {"shadow"},
}

// doctorConfig is what a validated doctor run checks.
type doctorConfig struct {
	role   string
	assist doctor.AssistConfig
	shadow doctor.ShadowConfig
	local  *doctor.ShadowLocalConfig // shadow with the agent on it (two hosts)
	prod   doctor.ProdConfig
	// prod only:
	agentAddr    string
	name         string
	secret       []byte
	tls          *tls.Config    // nil: plain TCP
	probes       []tcpstate.Map // empty without --probe
	pool         []netip.Prefix
	probeTimeout time.Duration
	transport    string // copy's --transport
	tunnelPort   int
}

func newDoctorCmd(g *globalOptions) *cobra.Command {
	o := &doctorOptions{}
	cmd := &cobra.Command{
		Use:   "doctor --role prod|shadow|assist [flags]",
		Short: "Check this host's settings for its role and name what would break the copy",
		Long: `doctor checks the host it runs on for one role and prints one line per check,
ok, warn or FAIL, with the exact command that fixes it. It exits non-zero if
any check FAILs. It changes nothing, except that --probe sends one synthetic
connection to the shadow (and resets it).

  assist: ip_forward and IPv6 forwarding off; a blackhole route for each IPv6
          --to prefix; capture permitted on --iface; the agent owns --listen's port
  shadow: the route for each --to prefix goes via --via (the assist host);
          rp_filter does not drop the forged sources; no input chain drops them
  shadow --local (two hosts, the agent here): the agent's nftables table, its
          chain on the output hook before conntrack, one rule per --to pool
          queueing without bypass to --queue-num; an agent bound to the queue
          and the kernel dropping none of it; a route for each pool, which
          the rule takes every packet from first (nothing to a pool leaves)
  prod:   capture and raw sends permitted; GRO/LRO off on --iface; the agent at
          --intercept answers the handshake (with --secret-file, and --tls-ca
          when the agent speaks TLS)
  prod:   with --send raw (copy's default), warns when raw sends would pass a
          conntrack table in use or output rules (suggests --send datalink)
  prod --capture URL: on a mirror target, listens to the session for
          --mirror-listen instead of checking --iface: nothing delivered, only
          another VNI or garbage, or truncated frames are named
  prod --probe: one forged SYN per --map from --client-pool through the whole
          path (prod → shadow → assist → prod); says which hop failed; a SYN
          that never reaches the shadow is named anti-spoofing on the path
  prod --probe --transport udp: a probe datagram the agent on the shadow must
          answer on --tunnel-port (else the UDP port is named blocked), then
          the SYN through the tunnel

Examples:
  tcpshadow doctor --role assist --iface eth0 --to 198.19.0.0/16 --to 2001:2:0:ff::/64
  tcpshadow doctor --role shadow --via 198.18.1.3 --to 198.19.0.0/16 --prod 198.18.1.1
  tcpshadow doctor --role shadow --local --to 198.19.0.0/16 --to 2001:2:0:ff::/64
  tcpshadow doctor --role prod --iface eth0 --intercept 198.18.1.3 --secret-file /etc/tcpshadow/secret \
      --probe --map 80-198.18.1.2:80 --client-pool 198.19.0.0/16`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// doctor prints results, not logs; a bad logging flag is
			// still an error, as for every command.
			if _, err := g.logger(cmd.ErrOrStderr()); err != nil {
				return err
			}
			cfg, err := o.config(cmd.Flags())
			if err != nil {
				return err
			}
			return runDoctor(cmd.Context(), cfg, doctor.System{}, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.role, "role", "", "this host's role: prod, shadow or assist")
	f.StringVarP(&o.iface, "iface", "i", "", "prod: the capture interface; assist: where the shadow's replies arrive")
	f.StringVarP(&o.agent, "intercept", "s", "", "prod: the intercept agent HOST[:PORT] (default port 36524)")
	f.StringVar(&o.secretFile, "secret-file", "", "prod: file holding the control channel's shared secret")
	f.StringVar(&o.tlsCA, "tls-ca", "", "prod: the agent speaks TLS; verify its certificate against these PEM CA certificates (as for copy)")
	f.StringVar(&o.tlsName, "tls-server-name", "", "prod: the name the agent's certificate must carry (default: the host of --intercept)")
	f.BoolVar(&o.probe, "probe", false, "prod: send one synthetic connection per --map through the whole path")
	f.StringSliceVarP(&o.maps, "map", "x", nil, "prod --probe: [LOCALADDR:]PORT-TARGETADDR:PORT, as for copy (repeatable)")
	f.StringSliceVarP(&o.pools, "client-pool", "c", nil, "prod --probe: the client pool to forge the probe's source from (one per family)")
	f.StringVar(&o.send, "send", doctor.SendRaw, "prod: the send path copy uses, raw or datalink (as copy --send)")
	f.StringVar(&o.transport, "transport", doctor.TransportDirect, "prod --probe: how copy's packets reach the shadow, direct or udp (as copy --transport): udp probes the tunnel's port first and sends the SYN through it")
	f.IntVar(&o.tunnelPort, "tunnel-port", tunnel.DefaultPort, "prod --probe --transport udp: the agent's tunnel port (as copy --tunnel-port)")
	f.StringVar(&o.capture, "capture", "", "prod: the mirror session copy reads, replacing --iface (as copy --capture)")
	f.DurationVar(&o.mirrorListen, "mirror-listen", doctor.MirrorListen, "prod --capture: how long to listen to the mirror session")
	f.DurationVar(&o.probeTimeout, "probe-timeout", 3*time.Second, "prod --probe: how long to wait for the shadow's relayed reply")
	f.StringSliceVar(&o.via, "via", nil, "shadow: the assist host's address (one per address family)")
	f.StringSliceVar(&o.to, "to", nil, "shadow, assist: client pool or client range the shadow's replies go to (repeatable)")
	f.StringVar(&o.prod, "prod", "", "shadow: prod's address as seen here (finds the interface copies arrive on)")
	f.StringVar(&o.listen, "listen", ":36524", "assist: the agent's listen address; its port is checked")
	f.BoolVar(&o.local, "local", false, "shadow: the agent runs here (intercept --local, two hosts): check its rules and queue instead of the route to an assist")
	f.IntVar(&o.queueNum, "queue-num", divert.DefaultQueueNum, "shadow --local: the agent's --queue-num")
	return cmd
}

// config validates the flags; every error names its flag. fs says which
// flags were given on the command line.
func (o *doctorOptions) config(fs *pflag.FlagSet) (*doctorConfig, error) {
	roles := []string{"prod", "shadow", "assist"}
	if o.role == "" {
		return nil, errors.New("--role is required: prod, shadow or assist")
	}
	if !slices.Contains(roles, o.role) {
		return nil, fmt.Errorf("--role %q: want prod, shadow or assist", o.role)
	}
	var misplaced []string
	fs.Visit(func(f *pflag.Flag) {
		if rs, ok := doctorFlagRoles[f.Name]; ok && !slices.Contains(rs, o.role) {
			misplaced = append(misplaced, fmt.Sprintf("--%s applies to --role %s", f.Name, strings.Join(rs, "|")))
		}
	})
	if len(misplaced) > 0 {
		slices.Sort(misplaced)
		return nil, fmt.Errorf("%s, not --role %s", strings.Join(misplaced, "; "), o.role)
	}
	cfg := &doctorConfig{role: o.role}
	to, err := prefixes("--to", o.to)
	if err != nil {
		return nil, err
	}
	switch o.role {
	case "assist":
		if o.iface == "" {
			return nil, errors.New("--iface is required: the interface the shadow's replies arrive on")
		}
		_, port, err := net.SplitHostPort(o.listen)
		if err != nil {
			return nil, fmt.Errorf("--listen %q: want [ADDR]:PORT: %w", o.listen, err)
		}
		if err := checkPort(port); err != nil {
			return nil, fmt.Errorf("--listen %q: %w", o.listen, err)
		}
		n, _ := strconv.ParseUint(port, 10, 16)
		cfg.assist = doctor.AssistConfig{Iface: o.iface, To: to, ListenPort: uint16(n)}
	case "shadow":
		if err := o.shadowConfig(cfg, to); err != nil {
			return nil, err
		}
	case "prod":
		if err := o.prodConfig(cfg); err != nil {
			return nil, err
		}
	}
	return cfg, nil
}

func (o *doctorOptions) shadowConfig(cfg *doctorConfig, to []netip.Prefix) error {
	if o.local {
		return o.localConfig(cfg, to)
	}
	if len(o.via) == 0 {
		return errors.New("--via is required: the assist host's address")
	}
	var via []netip.Addr
	for _, s := range o.via {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("--via %q: want an IP address", s)
		}
		a = a.Unmap()
		for _, v := range via {
			if v.Is4() == a.Is4() {
				return fmt.Errorf("--via %v: one address per family (already %v)", a, v)
			}
		}
		via = append(via, a)
	}
	if len(to) == 0 {
		return errors.New("--to is required: the client pool or client range the shadow's replies go to")
	}
	sc := doctor.ShadowConfig{Via: via, To: to}
	for _, p := range to {
		if !slices.ContainsFunc(via, func(v netip.Addr) bool { return v.Is4() == p.Addr().Is4() }) {
			return fmt.Errorf("--to %v: no --via of its address family", p)
		}
	}
	if o.prod != "" {
		a, err := netip.ParseAddr(o.prod)
		if err != nil {
			return fmt.Errorf("--prod %q: want an IP address", o.prod)
		}
		sc.Prod = a.Unmap()
	}
	cfg.shadow = sc
	return nil
}

func (o *doctorOptions) prodConfig(cfg *doctorConfig) error {
	if o.iface == "" && o.capture == "" {
		return errors.New("--iface is required: the interface copy captures on (or --capture on a mirror target)")
	}
	if o.send != "" && o.send != doctor.SendRaw && o.send != doctor.SendDatalink {
		return fmt.Errorf("--send %q: want raw or datalink", o.send)
	}
	var checkMirror func(context.Context) doctor.Result
	if o.capture != "" {
		if o.iface != "" {
			return errors.New("--iface or --capture, not both")
		}
		m, err := capture.ParseMirrorURL(o.capture)
		if err != nil {
			return fmt.Errorf("--capture: %w", err)
		}
		if o.mirrorListen <= 0 || o.mirrorListen > time.Minute {
			return fmt.Errorf("--mirror-listen %v: want (0, 1m]", o.mirrorListen)
		}
		d := o.mirrorListen
		checkMirror = func(ctx context.Context) doctor.Result {
			st, err := doctor.ListenMirror(ctx, m, d)
			return doctor.MirrorResult(m.String(), st, d, err)
		}
	}
	if o.agent == "" {
		return errors.New("--intercept is required: the intercept agent's address")
	}
	agent, err := agentAddr(o.agent)
	if err != nil {
		return fmt.Errorf("--intercept %q: %w", o.agent, err)
	}
	secret, err := readSecret(o.secretFile)
	if err != nil {
		return fmt.Errorf("--secret-file: %w", err)
	}
	tlsCfg, err := clientTLS(o.tlsCA, o.tlsName, agent)
	if err != nil {
		return fmt.Errorf("--tls-ca: %w", err)
	}
	if o.tlsName != "" && tlsCfg == nil {
		return errors.New("--tls-server-name needs --tls-ca")
	}
	cfg.tls = tlsCfg
	probes, err := parseMaps(o.maps, func(int) string { return "--map" })
	if err != nil {
		return err
	}
	cfg.probes = append(cfg.probes, probes...) // every target of a map is probed
	pool, err := prefixes("--client-pool", o.pools)
	if err != nil {
		return err
	}
	if _, err := rewrite.NewPool(pool, 0); err != nil {
		return fmt.Errorf("--client-pool: %w", err)
	}
	if o.probe {
		if len(cfg.probes) == 0 {
			return errors.New("--probe needs --map: which shadow service to probe")
		}
		for _, m := range cfg.probes {
			if !slices.ContainsFunc(pool, func(p netip.Prefix) bool { return p.Addr().Is4() == m.Target.Addr().Is4() }) {
				return fmt.Errorf("--probe needs a --client-pool of %v's address family: the probe forges its source from it", m.Target.Addr())
			}
		}
		if o.probeTimeout <= 0 || o.probeTimeout > time.Minute {
			return fmt.Errorf("--probe-timeout %v: want (0, 1m]", o.probeTimeout)
		}
	} else {
		cfg.probes = nil
	}
	switch o.transport {
	case "":
		o.transport = doctor.TransportDirect
	case doctor.TransportDirect:
	case doctor.TransportUDP:
		if len(secret) == 0 {
			return errors.New("--transport udp needs --secret-file: the tunnel's keys derive from the control channel's secret")
		}
	default:
		return fmt.Errorf("--transport %q: want direct or udp", o.transport)
	}
	if o.tunnelPort == 0 {
		o.tunnelPort = tunnel.DefaultPort
	}
	if o.tunnelPort < 1 || o.tunnelPort > 65535 {
		return fmt.Errorf("--tunnel-port %d: want 1..65535", o.tunnelPort)
	}
	cfg.transport, cfg.tunnelPort = o.transport, o.tunnelPort
	host, _ := os.Hostname()
	cfg.name = "doctor@" + host
	cfg.agentAddr, cfg.secret, cfg.pool, cfg.probeTimeout = agent, secret, pool, o.probeTimeout
	cfg.prod = doctor.ProdConfig{Iface: o.iface, Agent: agent, Send: o.send, CheckMirror: checkMirror}
	return nil
}

// agentProbe says how doctor connects to the agent: as the copy daemon does.
func (cfg *doctorConfig) agentProbe() intercept.ProbeConfig {
	var pools []wire.Pool
	for _, p := range cfg.pool {
		pools = append(pools, wire.Pool{Prefix: p, Slots: 1})
	}
	return intercept.ProbeConfig{Addr: cfg.agentAddr, Name: cfg.name, Secret: cfg.secret, TLS: cfg.tls, Pools: pools}
}

// prefixes parses a repeatable prefix flag.
func prefixes(flag string, ss []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range ss {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%s %q: want a prefix such as 198.19.0.0/16", flag, s)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// agentCheckTimeout bounds the agent check: dial plus handshake.
const agentCheckTimeout = 6 * time.Second

// runDoctor runs the role's checks on h, prints one line per check and a
// summary, and fails if any check failed.
func runDoctor(ctx context.Context, cfg *doctorConfig, h doctor.Host, out io.Writer) error {
	var rep doctor.Report
	emit := func(rs ...doctor.Result) {
		for _, r := range rs {
			fmt.Fprintln(out, r.String())
		}
		rep = append(rep, rs...)
	}
	switch cfg.role {
	case "assist":
		emit(doctor.Assist(h, cfg.assist)...)
	case "shadow":
		if cfg.local != nil {
			lh, ok := h.(doctor.LocalHost)
			if !ok {
				return errors.New("doctor --local: this host cannot be checked for the two-host mode")
			}
			emit(doctor.ShadowLocal(lh, *cfg.local)...)
			break
		}
		emit(doctor.Shadow(h, cfg.shadow)...)
	case "prod":
		pc := cfg.prod
		pc.ProbeAgent = func(ctx context.Context) (string, error) {
			ctx, cancel := context.WithTimeout(ctx, agentCheckTimeout)
			defer cancel()
			return intercept.Probe(ctx, cfg.agentProbe())
		}
		emit(doctor.Prod(ctx, h, pc)...)
		for _, m := range cfg.probes {
			emit(probeMap(ctx, cfg, m))
		}
	}
	fmt.Fprintf(out, "doctor --role %s: %s\n", cfg.role, rep.Summary())
	if n := rep.Count(doctor.Fail); n > 0 {
		if n == 1 {
			return errors.New("1 check failed")
		}
		return fmt.Errorf("%d checks failed", n)
	}
	return nil
}

// probeMap sends one synthetic connection to m's target from a random
// address of the pool and a random port.
func probeMap(ctx context.Context, cfg *doctorConfig, m tcpstate.Map) doctor.Result {
	var pool netip.Prefix
	for _, p := range cfg.pool {
		if p.Addr().Is4() == m.Target.Addr().Is4() {
			pool = p
		}
	}
	forged, _ := rewrite.NewPool([]netip.Prefix{pool}, rand.Uint64())
	src := netip.AddrPortFrom(forged.Map(m.Target.Addr()), uint16(32768+rand.IntN(28232)))
	assist, _, _ := net.SplitHostPort(cfg.agentAddr)
	c := doctor.ProbeConfig{
		Target: m.Target, Source: src, Pool: pool, Assist: assist,
		ISN: rand.Uint32(), Timeout: cfg.probeTimeout,
		Transport: cfg.transport, TunnelPort: cfg.tunnelPort,
	}
	if a, err := netip.ParseAddr(assist); err == nil && a.Unmap() == m.Target.Addr().Unmap() {
		c.AgentOnShadow = true
	}
	var sender *rawsock.Sender
	var tun *tunnelsock.Sender
	env := doctor.ProbeEnv{
		Open: func(ctx context.Context) (doctor.ProbeChannel, error) {
			ctx, cancel := context.WithTimeout(ctx, agentCheckTimeout)
			defer cancel()
			return intercept.DialProbe(ctx, cfg.agentProbe())
		},
		Tunnel: func(ctx context.Context, ch doctor.ProbeChannel) error {
			var err error
			tun, err = openProbeTunnel(ctx, ch, assist, cfg.tunnelPort)
			return err
		},
		Send: func(pkt []byte) error {
			if tun != nil {
				if err := tun.Send(pkt); err != nil {
					return err
				}
				_, err := tun.Flush()
				return err
			}
			if sender == nil {
				s, err := rawsock.Open()
				if err != nil {
					return err
				}
				sender = s
			}
			return sender.Send(pkt)
		},
		Direct: func(ctx context.Context, target netip.AddrPort) error {
			var d net.Dialer
			conn, err := d.DialContext(ctx, "tcp", target.String())
			if err != nil {
				return err
			}
			return conn.Close()
		},
	}
	defer func() {
		if sender != nil {
			sender.Close()
		}
		if tun != nil {
			tun.Close()
		}
	}()
	return doctor.Probe(ctx, c, env)
}

// tunnelAckWait bounds the wait for the agent's answer to the tunnel's
// probe datagrams.
const tunnelAckWait = 2 * time.Second

// openProbeTunnel checks the tunnel to the agent's host with the probe
// connection's keys and returns a sender through it.
func openProbeTunnel(ctx context.Context, ch doctor.ProbeChannel, host string, port int) (*tunnelsock.Sender, error) {
	pc, ok := ch.(*intercept.ProbeConn)
	if !ok {
		return nil, errors.New("no tunnel keys on this channel")
	}
	seal, open := pc.TunnelKeys()
	if seal == nil {
		return nil, errors.New("the control channel authenticated nothing: no tunnel keys (--secret-file)")
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(addrs) == 0 {
		return nil, fmt.Errorf("the agent's address %q: %w", host, err)
	}
	dst := netip.AddrPortFrom(addrs[0].Unmap(), uint16(port))
	if err := tunnelsock.Ping(ctx, dst, seal, open, tunnelAckWait); err != nil {
		if errors.Is(err, tunnelsock.ErrNoAck) {
			return nil, fmt.Errorf("%w: %w", doctor.ErrNoTunnelAck, err)
		}
		return nil, err
	}
	link := &tunnelsock.Link{Dst: dst}
	link.Keys.Store(seal)
	return tunnelsock.Open(link)
}
