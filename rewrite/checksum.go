package rewrite

import (
	"encoding/binary"
	"math/bits"
)

// Sum returns the 16-bit ones' complement sum (RFC 1071) of b, added to
// initial, without the final inversion. Bytes are taken as big-endian 16-bit
// words; a trailing odd byte is padded with zero.
//
// The loop adds 64-bit words with end-around carry: ones' complement
// arithmetic modulo 0xffff is the same whatever the word size, as long as it
// is a multiple of 16 bits, so folding at the end gives the 16-bit sum.
func Sum(b []byte, initial uint16) uint16 {
	acc := uint64(initial)
	var carry uint64
	for len(b) >= 32 {
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b[0:8]), 0)
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b[8:16]), carry)
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b[16:24]), carry)
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b[24:32]), carry)
		acc, carry = bits.Add64(acc, 0, carry)
		acc += carry // cannot overflow: acc is 0 if the line above carried
		b = b[32:]
	}
	for len(b) >= 8 {
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b), 0)
		acc += carry
		b = b[8:]
	}
	if len(b) >= 4 {
		acc, carry = bits.Add64(acc, uint64(binary.BigEndian.Uint32(b)), 0)
		acc += carry
		b = b[4:]
	}
	if len(b) >= 2 {
		acc, carry = bits.Add64(acc, uint64(binary.BigEndian.Uint16(b)), 0)
		acc += carry
		b = b[2:]
	}
	if len(b) == 1 {
		acc, carry = bits.Add64(acc, uint64(b[0])<<8, 0)
		acc += carry
	}
	return fold(acc)
}

// fold reduces a 64-bit ones' complement accumulator to 16 bits.
func fold(a uint64) uint16 {
	for a > 0xffff {
		a = (a >> 16) + (a & 0xffff)
	}
	return uint16(a)
}

// add16 is ones' complement addition of two 16-bit values.
func add16(a, b uint16) uint16 {
	s := uint32(a) + uint32(b)
	return uint16(s>>16 + s&0xffff)
}

// PseudoHeaderSum returns the ones' complement sum of the TCP/UDP pseudo
// header (RFC 793 §3.1 for IPv4, RFC 8200 §8.1 for IPv6). src and dst are 4
// or 16 bytes; length is the transport segment length (header + payload).
func PseudoHeaderSum(proto uint8, src, dst []byte, length uint32) uint16 {
	s := Sum(src, 0)
	s = Sum(dst, s)
	s = add16(s, uint16(proto))
	s = add16(s, uint16(length>>16))
	return add16(s, uint16(length))
}

// Update16 returns checksum cksum adjusted for a 16-bit field of the covered
// data changing from old to new (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
func Update16(cksum, old, new uint16) uint16 {
	return ^add16(add16(^cksum, ^old), new)
}

// Update32 is Update16 for a 32-bit field aligned on a 16-bit boundary.
func Update32(cksum uint16, old, new uint32) uint16 {
	s := add16(^cksum, ^uint16(old>>16))
	s = add16(s, ^uint16(old))
	s = add16(s, uint16(new>>16))
	s = add16(s, uint16(new))
	return ^s
}

// UpdateBytes is Update16 for a field of even length (an address) changing
// from old to new; len(old) must equal len(new).
func UpdateBytes(cksum uint16, old, new []byte) uint16 {
	s := ^cksum
	for i := 0; i+1 < len(old) && i+1 < len(new); i += 2 {
		s = add16(s, ^binary.BigEndian.Uint16(old[i:]))
		s = add16(s, binary.BigEndian.Uint16(new[i:]))
	}
	return ^s
}
