package divert

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// TestPoolExprs: each pool's rule matches its family's destination
// address under the pool's mask, counts, and queues without bypass.
func TestPoolExprs(t *testing.T) {
	r := Rules{Queue: 7}
	for _, tc := range []struct {
		pool      string
		proto     byte
		off, n    uint32
		mask, key []byte
	}{
		{"198.19.0.0/16", unix.NFPROTO_IPV4, 16, 4, []byte{255, 255, 0, 0}, []byte{198, 19, 0, 0}},
		{"198.19.7.9/32", unix.NFPROTO_IPV4, 16, 4, nil, []byte{198, 19, 7, 9}},
		{"2001:2:0:ff::/64", unix.NFPROTO_IPV6, 24, 16,
			[]byte{255, 255, 255, 255, 255, 255, 255, 255, 0, 0, 0, 0, 0, 0, 0, 0},
			netip.MustParseAddr("2001:2:0:ff::").AsSlice()},
	} {
		es := r.poolExprs(netip.MustParsePrefix(tc.pool))
		var sawProto, sawPayload, sawKey, sawCounter, sawQueue bool
		var mask []byte
		for i, e := range es {
			switch e := e.(type) {
			case *expr.Cmp:
				if len(e.Data) == 1 {
					sawProto = e.Data[0] == tc.proto && i == 1
				} else {
					sawKey = bytes.Equal(e.Data, tc.key)
				}
			case *expr.Payload:
				sawPayload = e.Base == expr.PayloadBaseNetworkHeader && e.Offset == tc.off && e.Len == tc.n
			case *expr.Bitwise:
				mask = e.Mask
			case *expr.Counter:
				sawCounter = true
			case *expr.Target:
				info := *e.Info.(*xt.Unknown)
				sawQueue = e.Name == "NFQUEUE" && e.Rev == 3 && len(info) == 8 &&
					binary.NativeEndian.Uint16(info) == 7 && binary.NativeEndian.Uint16(info[4:])&nfqBypass == 0 && i == len(es)-1
			}
		}
		if !sawProto || !sawPayload || !sawKey || !sawCounter || !sawQueue || !bytes.Equal(mask, tc.mask) {
			t.Errorf("%s: proto %v payload %v key %v counter %v queue-last-no-bypass %v mask %v (want %v)",
				tc.pool, sawProto, sawPayload, sawKey, sawCounter, sawQueue, mask, tc.mask)
		}
		got := readRule(es)
		if got.Pool != netip.MustParsePrefix(tc.pool) || got.Queue != 7 || !got.Queued || got.Bypass {
			t.Errorf("%s: read back as %+v", tc.pool, got)
		}
	}
}

// TestPoolExprsMasksHostBits: a pool written with host bits set matches
// its masked prefix.
func TestPoolExprsMasksHostBits(t *testing.T) {
	r := Rules{Queue: 1}
	got := readRule(r.poolExprs(netip.MustParsePrefix("198.19.3.4/16")))
	if got.Pool != netip.MustParsePrefix("198.19.0.0/16") {
		t.Fatalf("pool read back as %v, want 198.19.0.0/16", got.Pool)
	}
}

// TestReadRuleForeign: a rule Install does not write has no pool.
func TestReadRuleForeign(t *testing.T) {
	got := readRule([]expr.Any{&expr.Counter{Packets: 3}, &expr.Queue{Num: 2, Flag: expr.QueueFlagBypass}})
	if got.Pool.IsValid() || !got.Bypass || got.Packets != 3 || got.Queue != 2 {
		t.Fatalf("read back as %+v", got)
	}
}

func TestInstallNoPools(t *testing.T) {
	if _, err := (&Rules{Queue: 1}).Install(); err == nil {
		t.Fatal("Install with no pools succeeded")
	}
}

// TestInstallOneTransaction: Install sends one batch, in one write, that
// adds the table, deletes it and adds it again with its chain and one rule
// per pool: a table a killed run left is replaced with no moment between
// the two without rules, and no table is ever there twice.
func TestInstallOneTransaction(t *testing.T) {
	var batches [][]uint16
	r := &Rules{Queue: 9, Pools: []netip.Prefix{netip.MustParsePrefix("198.19.0.0/16"), netip.MustParsePrefix("2001:2:0:ff::/64")}}
	r.opts = []nftables.ConnOption{nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		var types []uint16
		for _, m := range req {
			types = append(types, uint16(m.Header.Type))
		}
		if len(req) == 1 && uint16(req[0].Header.Type)&0xff == unix.NFT_MSG_GETTABLE {
			return nil, nil // no table there
		}
		if len(req) > 0 { // empty: a receive
			batches = append(batches, types)
		}
		return req, nil // acknowledged
	})}
	replaced, err := r.Install()
	if err != nil || replaced {
		t.Fatalf("install: replaced %v, %v", replaced, err)
	}
	nft := func(m uint16) uint16 { return unix.NFNL_SUBSYS_NFTABLES<<8 | m }
	want := []uint16{unix.NFNL_MSG_BATCH_BEGIN, nft(unix.NFT_MSG_NEWTABLE), nft(unix.NFT_MSG_DELTABLE), nft(unix.NFT_MSG_NEWTABLE),
		nft(unix.NFT_MSG_NEWCHAIN), nft(unix.NFT_MSG_NEWRULE), nft(unix.NFT_MSG_NEWRULE), unix.NFNL_MSG_BATCH_END}
	if len(batches) != 1 || !slices.Equal(batches[0], want) {
		t.Fatalf("sent %v, want one batch %v", batches, want)
	}
}
