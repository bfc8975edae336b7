package capture

/*
#cgo linux LDFLAGS: -lpcap
#include <stdlib.h>
#include <pcap.h>
*/
import "C"

import (
	"errors"
	"fmt"
	"unsafe"
)

// This file is the handle's phase before any packet: libpcap opened,
// configured and activated, its filter compiled. It calls libpcap
// directly rather than through gopacket's pcap package, whose import
// brings gopacket's layers: about 7 MB of lookup tables filled at
// start-up, resident in every daemon though nothing here decodes with
// them.

// linkType is a libpcap DLT / LINKTYPE value.
type linkType uint16

// The link types this package reads (linkHeaderLen).
const (
	linkNull     linkType = 0   // BSD loopback
	linkEthernet linkType = 1   // Ethernet, the inner frame of every mirror
	linkRawAlt   linkType = 12  // DLT_RAW: live raw-IP devices (101 is its file form)
	linkRaw      linkType = 101 // raw IPv4 or IPv6
	linkLoop     linkType = 108 // OpenBSD loopback
	linkLinuxSLL linkType = 113 // Linux cooked v1 ("any")
	linkIPv4     linkType = 228
	linkIPv6     linkType = 229
)

// handle is an open libpcap handle. It is not safe for concurrent use:
// pcapSource serializes its calls.
type handle struct {
	p *C.pcap_t
}

// pcapErr is libpcap's message for p's last error.
func pcapErr(p *C.pcap_t) error { return errors.New(C.GoString(C.pcap_geterr(p))) }

// openLive creates, configures and activates a live handle, non-blocking.
func openLive(cfg Config) (*handle, error) {
	dev := C.CString(cfg.Interface)
	defer C.free(unsafe.Pointer(dev))
	var errbuf [C.PCAP_ERRBUF_SIZE]C.char
	p := C.pcap_create(dev, &errbuf[0])
	if p == nil {
		return nil, fmt.Errorf("open %s: %s", cfg.Interface, C.GoString(&errbuf[0]))
	}
	h := &handle{p: p}
	b2i := func(b bool) C.int {
		if b {
			return 1
		}
		return 0
	}
	for _, set := range []struct {
		what string
		rc   C.int
	}{
		{"snaplen", C.pcap_set_snaplen(p, C.int(cfg.SnapLen))},
		{"buffer size", C.pcap_set_buffer_size(p, C.int(cfg.BufferSize))},
		{"immediate mode", C.pcap_set_immediate_mode(p, b2i(cfg.Immediate))},
		{"timeout", C.pcap_set_timeout(p, C.int(max(1, cfg.Timeout.Milliseconds())))},
		{"promisc", C.pcap_set_promisc(p, b2i(cfg.Promisc))},
	} {
		if set.rc != 0 {
			h.close()
			return nil, fmt.Errorf("set %s on %s: libpcap error %d", set.what, cfg.Interface, int(set.rc))
		}
	}
	if rc := C.pcap_activate(p); rc < 0 {
		err := pcapErr(p)
		if msg := err.Error(); msg == "" {
			err = fmt.Errorf("%s", C.GoString(C.pcap_statustostr(rc)))
		}
		h.close()
		return nil, fmt.Errorf("activate capture on %s: %w", cfg.Interface, err)
	}
	if C.pcap_setnonblock(p, 1, &errbuf[0]) < 0 {
		h.close()
		return nil, fmt.Errorf("capture on %s non-blocking: %s", cfg.Interface, C.GoString(&errbuf[0]))
	}
	return h, nil
}

// openOffline opens a pcap or pcapng file, timestamps in nanoseconds.
func openOffline(path string) (*handle, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var errbuf [C.PCAP_ERRBUF_SIZE]C.char
	p := C.pcap_open_offline_with_tstamp_precision(cpath, C.PCAP_TSTAMP_PRECISION_NANO, &errbuf[0])
	if p == nil {
		return nil, errors.New(C.GoString(&errbuf[0]))
	}
	return &handle{p: p}, nil
}

// Directions for setDirection.
const (
	dirIn  = C.PCAP_D_IN
	dirOut = C.PCAP_D_OUT
)

func (h *handle) setDirection(d C.pcap_direction_t) error {
	if C.pcap_setdirection(h.p, d) != 0 {
		return pcapErr(h.p)
	}
	return nil
}

// setFilter compiles expr for the handle's link type and installs it.
func (h *handle) setFilter(expr string) error {
	cexpr := C.CString(expr)
	defer C.free(unsafe.Pointer(cexpr))
	var prog C.struct_bpf_program
	if C.pcap_compile(h.p, &prog, cexpr, 1, C.PCAP_NETMASK_UNKNOWN) != 0 {
		return pcapErr(h.p)
	}
	defer C.pcap_freecode(&prog)
	if C.pcap_setfilter(h.p, &prog) != 0 {
		return pcapErr(h.p)
	}
	return nil
}

func (h *handle) linkType() linkType { return linkType(C.pcap_datalink(h.p)) }

// stats returns libpcap's counters: received, dropped by the kernel,
// dropped by the interface.
func (h *handle) stats() (recv, drop, ifdrop uint64, err error) {
	var s C.struct_pcap_stat
	if C.pcap_stats(h.p, &s) != 0 {
		return 0, 0, 0, pcapErr(h.p)
	}
	return uint64(s.ps_recv), uint64(s.ps_drop), uint64(s.ps_ifdrop), nil
}

func (h *handle) close() {
	if h.p != nil {
		C.pcap_close(h.p)
		h.p = nil
	}
}

// LibVersion is libpcap's version string.
func LibVersion() string { return C.GoString(C.pcap_lib_version()) }
