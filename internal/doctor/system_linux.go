package doctor

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tcpshadow/tcpshadow/capture"
	"github.com/tcpshadow/tcpshadow/internal/rawsock"
)

// System is the live host: /proc/sys, netlink, ethtool ioctls, libpcap,
// raw sockets, /proc/net/tcp and nft.
type System struct{}

var _ Host = System{}

// Sysctl implements Host.
func (System) Sysctl(path string) (int, error) {
	if strings.Contains(path, "..") || strings.HasPrefix(path, "/") {
		return 0, fmt.Errorf("sysctl %q: bad path", path)
	}
	b, err := os.ReadFile(filepath.Join("/proc/sys", path))
	if err != nil {
		return 0, err
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("sysctl %s: %w", sysctlName(path), err)
	}
	return v, nil
}

// RouteTo implements Host with RTM_GETROUTE, so policy rules and tables
// count as they do for real packets. The kernel refuses a lookup that
// ends at a route which discards, with the error of that route's type
// (fib_props / ip6_rt_type_to_error): that is how those are told apart.
func (System) RouteTo(dst netip.Addr) (Route, error) {
	rs, err := netlink.RouteGet(dst.AsSlice())
	switch {
	case errors.Is(err, unix.ENETUNREACH):
		return Route{}, ErrNoRoute
	case errors.Is(err, unix.EINVAL):
		return Route{Kind: Blackhole}, nil
	case errors.Is(err, unix.EHOSTUNREACH):
		return Route{Kind: Unreachable}, nil
	case errors.Is(err, unix.EACCES):
		return Route{Kind: Prohibit}, nil
	case err != nil:
		return Route{}, fmt.Errorf("route get %v: %w", dst, err)
	case len(rs) == 0:
		return Route{}, ErrNoRoute
	}
	r := rs[0]
	out := Route{Kind: Unicast}
	if r.Type == unix.RTN_LOCAL {
		out.Kind = Local
	}
	if gw, ok := netip.AddrFromSlice(r.Gw); ok {
		out.Gateway = gw.Unmap()
	}
	if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
		out.Dev = l.Attrs().Name
	} else {
		out.Dev = "if" + strconv.Itoa(r.LinkIndex)
	}
	return out, nil
}

// Link implements Host.
func (System) Link(name string) error {
	_, err := net.InterfaceByName(name)
	return err
}

// GROMaxSize implements Host.
func (System) GROMaxSize(iface string) (int, error) {
	l, err := netlink.LinkByName(iface)
	if err != nil {
		return 0, fmt.Errorf("link %s: %w", iface, err)
	}
	a := l.Attrs()
	return int(max(a.GROMaxSize, a.GROIPv4MaxSize)), nil
}

// ethtoolValue is struct ethtool_value.
type ethtoolValue struct{ cmd, data uint32 }

// ifreqData is struct ifreq with ifr_data set, laid out as x/sys/unix
// does it: a pointer field (not bytes) keeps the pointer visible to the
// garbage collector for the ioctl.
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [24 - unsafe.Sizeof(unsafe.Pointer(nil))]byte
}

// ethFlagLRO is ETH_FLAG_LRO of ETHTOOL_GFLAGS.
const ethFlagLRO = 1 << 15

func ethtoolGet(fd int, iface string, cmd uint32) (uint32, error) {
	if len(iface) >= unix.IFNAMSIZ {
		return 0, fmt.Errorf("interface name %q too long", iface)
	}
	v := &ethtoolValue{cmd: cmd}
	var ifr ifreqData
	copy(ifr.name[:], iface)
	ifr.data = unsafe.Pointer(v)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	runtime.KeepAlive(v)
	if errno != 0 {
		return 0, errno
	}
	return v.data, nil
}

// Offloads implements Host with the ethtool ioctls ETHTOOL_GGRO and
// ETHTOOL_GFLAGS (what ethtool -k reads). A driver without LRO reports
// it off.
func (System) Offloads(iface string) (gro, lro bool, err error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false, false, fmt.Errorf("ethtool socket: %w", err)
	}
	defer unix.Close(fd)
	g, err := ethtoolGet(fd, iface, unix.ETHTOOL_GGRO)
	if err != nil {
		return false, false, fmt.Errorf("ETHTOOL_GGRO on %s: %w", iface, err)
	}
	f, err := ethtoolGet(fd, iface, unix.ETHTOOL_GFLAGS)
	if err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
		return false, false, fmt.Errorf("ETHTOOL_GFLAGS on %s: %w", iface, err)
	}
	return g != 0, f&ethFlagLRO != 0, nil
}

// CanCapture implements Host: a small live capture, opened and closed.
func (System) CanCapture(iface string) error {
	src, err := capture.OpenLive(capture.Config{
		Interface: iface, SnapLen: 128, BufferSize: 1 << 20, Timeout: 10 * time.Millisecond,
	})
	if err != nil {
		return err
	}
	return src.Close()
}

// CanSendRaw implements Host.
func (System) CanSendRaw() error {
	s, err := rawsock.Open()
	if err != nil {
		return err
	}
	return s.Close()
}

// Listeners implements Host from /proc/net/tcp{,6} (this network
// namespace's sockets) and the socket links under /proc/*/fd.
func (System) Listeners(port uint16) ([]Listener, error) {
	var socks []procSock
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		fh, err := os.Open(f)
		if errors.Is(err, os.ErrNotExist) {
			continue // no IPv6
		}
		if err != nil {
			return nil, err
		}
		s, err := parseProcNetTCP(fh, port)
		fh.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		socks = append(socks, s...)
	}
	if len(socks) == 0 {
		return nil, nil
	}
	owners := socketOwners(socks)
	out := make([]Listener, 0, len(socks))
	for _, s := range socks {
		l := Listener{Addr: s.addr}
		if pid, ok := owners[s.inode]; ok {
			l.PID = pid
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
			l.Comm = strings.TrimSpace(string(comm))
		}
		out = append(out, l)
	}
	return out, nil
}

// procSock is one listening socket of /proc/net/tcp.
type procSock struct {
	addr  netip.AddrPort
	inode uint64
}

// tcpListen is TCP_LISTEN in /proc/net/tcp's st column.
const tcpListen = "0A"

// parseProcNetTCP returns the sockets listening on port from the text of
// /proc/net/tcp or /proc/net/tcp6. Addresses there are 32-bit words in
// host byte order, printed in hex; ports are big-endian hex.
func parseProcNetTCP(r io.Reader, port uint16) ([]procSock, error) {
	var out []procSock
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), 1<<16)
	first := true
	for sc.Scan() {
		if first {
			first = false // the header
			continue
		}
		fs := strings.Fields(sc.Text())
		if len(fs) < 10 || fs[3] != tcpListen {
			continue
		}
		hexAddr, hexPort, ok := strings.Cut(fs[1], ":")
		if !ok {
			return nil, fmt.Errorf("bad local address %q", fs[1])
		}
		p, err := strconv.ParseUint(hexPort, 16, 16)
		if err != nil {
			return nil, fmt.Errorf("bad port in %q", fs[1])
		}
		if uint16(p) != port {
			continue
		}
		raw, err := hex.DecodeString(hexAddr)
		if err != nil || (len(raw) != 4 && len(raw) != 16) {
			return nil, fmt.Errorf("bad address in %q", fs[1])
		}
		for i := 0; i < len(raw); i += 4 {
			binary.BigEndian.PutUint32(raw[i:], binary.NativeEndian.Uint32(raw[i:]))
		}
		a, _ := netip.AddrFromSlice(raw)
		ino, err := strconv.ParseUint(fs[9], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("bad inode %q", fs[9])
		}
		out = append(out, procSock{addr: netip.AddrPortFrom(a.Unmap(), uint16(p)), inode: ino})
	}
	return out, sc.Err()
}

// maxProcScan bounds the processes whose descriptors are read.
const maxProcScan = 1 << 16

// socketOwners maps the inodes of socks to a process holding each.
func socketOwners(socks []procSock) map[uint64]int {
	want := make(map[string]uint64, len(socks))
	for _, s := range socks {
		want["socket:["+strconv.FormatUint(s.inode, 10)+"]"] = s.inode
	}
	owners := make(map[uint64]int)
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return owners
	}
	for i, e := range ents {
		if i >= maxProcScan || len(owners) == len(want) {
			break
		}
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		dir := filepath.Join("/proc", e.Name(), "fd")
		fds, err := os.ReadDir(dir)
		if err != nil {
			continue // gone, or not ours to read
		}
		for _, fd := range fds {
			link, err := os.Readlink(filepath.Join(dir, fd.Name()))
			if err != nil {
				continue
			}
			if ino, ok := want[link]; ok {
				if _, seen := owners[ino]; !seen {
					owners[ino] = pid
				}
			}
		}
	}
	return owners
}

// nftTimeout bounds one nft invocation.
const nftTimeout = 5 * time.Second

// InputDropChains implements Host with nft's JSON output; iptables-nft
// rules show there too, iptables-legacy ones do not.
func (System) InputDropChains() ([]string, error) {
	nft, err := exec.LookPath("nft")
	if err != nil {
		return nil, ErrNotChecked
	}
	ctx, cancel := context.WithTimeout(context.Background(), nftTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, nft, "-j", "list", "chains").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && len(ee.Stderr) > 0 {
			return nil, fmt.Errorf("nft -j list chains: %w: %s", err, strings.TrimSpace(string(ee.Stderr)))
		}
		return nil, fmt.Errorf("nft -j list chains: %w", err)
	}
	return parseNftChains(out)
}

// parseNftChains returns "FAMILY TABLE CHAIN" for each base chain on the
// input hook whose policy is drop, from `nft -j list chains`.
func parseNftChains(b []byte) ([]string, error) {
	var doc struct {
		Nftables []struct {
			Chain *struct {
				Family, Table, Name, Hook, Policy string
			} `json:"chain"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("nft json: %w", err)
	}
	var out []string
	for _, o := range doc.Nftables {
		if c := o.Chain; c != nil && c.Hook == "input" && c.Policy == "drop" {
			out = append(out, c.Family+" "+c.Table+" "+c.Name)
		}
	}
	return out, nil
}
